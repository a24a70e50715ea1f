"""The model a probe trains: where its config comes from, building it on a device (LoRA, QLoRA,
freezing), vision-language families, worst-case inputs, and `--dataset` measurement."""
