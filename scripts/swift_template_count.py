"""ms-swift's own count of a JSONL file's samples, by its real template (run in ms-swift's venv):
the longest sample as that run type feeds it -- sft: the conversation; dpo: the longer of the
chosen and the rejected side (TemplateInputs builds the rejected one); grpo: the prompt without
its reply (remove_response), as the rollout encodes it. scripts/swift_sft_roundtrip.sh compares
it with autotune's count of the same file.
    python scripts/swift_template_count.py MODEL_DIR MODEL_TYPE TEMPLATE SYSTEM DATA.jsonl sft|dpo|grpo"""

import json
import sys


def template_for(model_dir: str, model_type: str, template_type: str, system: str):
    try:  # ms-swift 4.x
        from swift.model import get_processor
        from swift.template import get_template

        return get_template(get_processor(model_dir, model_type=model_type), system, template_type=template_type)
    except ImportError:  # 3.x
        from swift.llm import get_model_tokenizer, get_template

        _, processor = get_model_tokenizer(model_dir, load_model=False, model_type=model_type)
        return get_template(template_type, processor, system)


def inputs_of(record: dict):
    try:
        from swift.template.template_inputs import TemplateInputs
    except ImportError:
        from swift.llm import TemplateInputs
    return TemplateInputs.from_dict(record)


def main(model_dir, model_type, template_type, system, data, mode) -> None:
    from swift.utils import remove_response

    template = template_for(model_dir, model_type, template_type, system)
    template.set_mode({"dpo": "rlhf"}.get(mode, "train"))
    longest = 0
    for line in open(data, encoding="utf-8"):
        record = json.loads(line)
        if mode == "grpo":
            remove_response(record["messages"])
        encoded = template.encode(inputs_of(record))
        sides = [len(v) for k, v in encoded.items() if k.endswith("input_ids")]  # dpo: chosen_ and rejected_input_ids
        longest = max(longest, *sides)
    print(longest)


if __name__ == "__main__":
    main(*sys.argv[1:])
