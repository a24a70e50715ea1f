"""Train with the Hugging Face Trainer using an autotune recipe.

    python -m autotune probe --model ./Qwen2.5-0.5B --max-length 2048 --global-batch-size 64 --out recipe.yaml
    python -m autotune check recipe.yaml || exit $?      # pre-flight: still fits here?
    python recipes/train_with_recipe.py recipe.yaml ./Qwen2.5-0.5B data.jsonl

`recipe.apply(args)` returns a copy of your TrainingArguments with the tuned batch sizes,
accumulation, checkpointing and eval settings; it warns where you had set something else.
The model is loaded with the recipe's attention implementation and dtype, and every sample is
cut to the recipe's max_length: the length the probe measured.
"""

import json
import sys

from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments

import autotune


def main(recipe_path: str, model_dir: str, data_file: str) -> None:
    recipe = autotune.load_recipe(recipe_path)
    s = recipe.settings
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=s.attn_implementation, dtype=s.torch_dtype)
    if recipe.model.train_type == "lora":
        from peft import LoraConfig, get_peft_model

        from autotune.recipe.lora import peft_target_of

        # its targets: target_modules (names or all-linear) or target_regex; a vision-language
        # model's all-linear as peft_target_regex (the unfrozen parts' linear layers only)
        lora = recipe.model.lora
        model = get_peft_model(model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                                 target_modules=peft_target_of(lora), task_type="CAUSAL_LM"))
    with open(data_file) as handle:  # one {"text": ...} per line
        texts = [json.loads(line)["text"] for line in handle if line.strip()]
    data = [tokenizer(text, truncation=True, max_length=s.max_length) for text in texts]

    args = TrainingArguments(output_dir="output", learning_rate=1e-4, num_train_epochs=1, logging_steps=10,
                             bf16=s.torch_dtype == "bfloat16")
    args = recipe.apply(args)  # per-device batch, accumulation, checkpointing, eval batch/accumulation
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    trainer.train()


if __name__ == "__main__":
    main(*sys.argv[1:4])
