"""One configuration, run: the real `Trainer` under the device's counter (`trials/trial.py`,
`trials/trainer_run.py`), and the step model for where the Trainer cannot drive (`trials/step_model.py`)."""
