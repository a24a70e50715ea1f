"""One configuration, run: the real `Trainer` under the device's counter (`trial.py`,
`trainer_run.py`), and the step model for where the Trainer cannot drive (`step_model.py`)."""
