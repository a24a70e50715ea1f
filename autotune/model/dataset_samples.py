"""One line of an ms-swift JSONL file read as ms-swift reads it: the conversation as its
MessagesPreprocessor takes it (message keys, role names, the system prompt's precedence), the
media paths where its template looks for them, and what autotune does not count (tools, tool
calls, audio, grounding objects, a video without a frame limit). dataset.py measures them."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError
from ..extras import install_hint

MEDIA_TAGS = ("<image>", "<video>")


def records(path: Path):
    """(line number, object or None, problem or None) for every non-empty line."""
    try:
        handle = path.open("rb")  # decoded line by line: one bad byte is that line's problem, not the file's
    except OSError as exc:
        raise UsageError("--dataset", f"cannot read {path}: {exc.strerror}") from None
    with handle:
        for number, raw in enumerate(handle, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, None, f"not UTF-8 (byte {exc.start + 1})"
                continue
            if not text.strip():
                continue
            try:
                yield number, json.loads(text), None
            except json.JSONDecodeError as exc:
                yield number, None, f"not valid JSON ({exc.msg} at column {exc.colno})"


# How ms-swift's MessagesPreprocessor reads a conversation (swift/dataset/preprocessor/core.py):
# the keys and role names it accepts, mapped to the chat template's.
MESSAGE_KEYS = ("messages", "conversation", "conversations")
ROLE_KEYS, CONTENT_KEYS = ("role", "from"), ("content", "value")
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "system": "system"}


def role_and_content(message) -> tuple:
    """A message's role and content under either of ms-swift's spellings (role/content, from/value)."""
    if not isinstance(message, dict):
        return None, None
    return (next((message[k] for k in ROLE_KEYS if k in message), None), next((message[k] for k in CONTENT_KEYS if k in message), None))


def conversation(record, system: str | None) -> tuple[list[dict] | None, str | None]:
    """(the sample's messages as the chat template takes them, None) or (None, why it cannot be
    counted). As ms-swift: `messages` / `conversation(s)`, role or from, content or value, human /
    gpt / bot roles; the system prompt is the conversation's own, else the sample's `system` /
    `system_prompt`, else `system` (the run's --system). Tools and tool calls, which ms-swift's
    agent template writes into the prompt in its own layout, are not guessed at."""
    if not isinstance(record, dict):
        return None, "not a JSON object"
    messages = next((record[key] for key in MESSAGE_KEYS if key in record), None)
    if not isinstance(messages, list) or not messages:
        return None, "no 'messages' list"
    if record.get("tools"):
        return None, "has tools, which ms-swift's agent template writes into the prompt: its length is not counted"
    out = []
    for i, message in enumerate(messages):
        role, content = role_and_content(message)
        if isinstance(message, dict) and message.get("tool_calls"):
            return None, f"messages[{i}] holds tool calls, which ms-swift's agent template lays out: its length is not counted"
        if not isinstance(role, str) or not isinstance(content, str):
            return None, f"messages[{i}] needs a string 'role' and a string 'content'"
        if role not in ROLES:
            return None, f"messages[{i}] has the role {role!r}, which ms-swift's agent template lays out: its length is not counted"
        out.append({"role": ROLES[role], "content": strip_tags(content)})
    own = next((record[key] for key in ("system", "system_prompt") if isinstance(record.get(key), str)), None)
    if out[0]["role"] != "system" and (own if own is not None else system) is not None:
        out.insert(0, {"role": "system", "content": own if own is not None else system})
    for key in ("images", "videos"):
        value = record.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None, f"'{key}' must be a path or a list of paths"
    return out, None


def sequences(record, system: str | None, rlhf_type: str | None = None) -> tuple[list[tuple[list[dict], dict, bool]] | None, str | None]:
    """The sequences one sample becomes in the run, each (messages, the record holding its media,
    whether the chat template adds the generation prompt), or (None, why it cannot be counted).
    Supervised: the conversation. DPO (ms-swift's TemplateInputs): the chosen conversation and the
    rejected one -- `rejected_response` (a reply, or a list of assistant / tool messages) in place of
    everything after the last user turn, with the chosen's media, or a whole `rejected_messages`
    with its own `rejected_images` / `rejected_videos`; each is cut to max_length on its own, so the
    longer one is the sample's length. GRPO: the prompt the policy completes, the conversation
    without its last assistant reply (ms-swift's remove_response) and with the generation prompt;
    max_length limits it, the completion has max_completion_length."""
    messages, problem = conversation(record, system)
    if problem:
        return None, problem
    if rlhf_type == "grpo":
        prompt = messages[:-1] if messages[-1]["role"] == "assistant" else messages
        if not any(m["role"] == "user" for m in prompt):
            return None, "has no user turn for GRPO to prompt with"
        return [(prompt, record, True)], None
    if rlhf_type != "dpo":
        return [(messages, record, False)], None
    if messages[-1]["role"] != "assistant":
        return None, "ends without an assistant reply: DPO's chosen response"
    if record.get("rejected_messages") is not None:
        rejected_record = {"messages": record["rejected_messages"], "system": record.get("rejected_system"),
                           **{key: record[f"rejected_{key}"] for key in ("images", "videos") if f"rejected_{key}" in record}}
        rejected, problem = conversation(rejected_record, system)
        if problem:
            return None, f"rejected_messages: {problem}"
        return [(messages, record, False), (rejected, rejected_record, False)], None
    reply = record.get("rejected_response")
    if reply is None:
        return None, "has no rejected_response or rejected_messages, which DPO needs"
    reply, problem = _rejected_reply(reply)
    if problem:
        return None, problem
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user") if any(m["role"] == "user" for m in messages) else -1
    return [(messages, record, False), (messages[:last_user + 1] + reply, record, False)], None


def _rejected_reply(reply) -> tuple[list[dict] | None, str | None]:
    """ms-swift's rejected_response: a string (one assistant reply) or a list of messages, no user turn among them."""
    if isinstance(reply, str):
        return [{"role": "assistant", "content": strip_tags(reply)}], None
    if not isinstance(reply, list) or not reply:
        return None, "rejected_response must be a string or a list of messages"
    out = []
    for i, message in enumerate(reply):
        role, content = role_and_content(message)
        if not isinstance(role, str) or not isinstance(content, str):
            return None, f"rejected_response[{i}] needs a string 'role' and a string 'content'"
        if ROLES.get(role) != "assistant":
            return None, (f"rejected_response[{i}] has the role {role!r}: ms-swift allows no user turn there, and autotune counts "
                          "assistant replies only")
        out.append({"role": "assistant", "content": strip_tags(content)})
    return out, None


def media_paths(record, key: str) -> list[str]:
    value = record.get(key) or []
    return [value] if isinstance(value, str) else value


def media_file(name: str, data_file: Path, root: str | None = None, beside: bool = True) -> Path:
    """Where a sample's image or video is, as ms-swift looks for it: the path as given (from the
    directory it is launched from), then under ROOT_IMAGE_DIR (`root`: the run's, else this
    shell's); then, with `beside`, next to the JSONL file (where ms-swift does not look)."""
    import os

    given = Path(name).expanduser()
    places = [given]
    root = root or os.environ.get("ROOT_IMAGE_DIR")
    if root:
        places.append(Path(root).expanduser() / given)
    if beside:
        places.append(data_file.parent / given)
    return next((place for place in places if place.is_file()), places[-1])


def uncounted_media(record: dict, videos: list, family, spec) -> str | None:
    """Why a sample's media cannot be counted: a video with no frame limit (qwen-vl-utils' own
    default runs to hundreds of frames), audio, grounding objects (which ms-swift's template
    expands into the text)."""
    if videos and not family.supports_video:
        return f"has a video, and {family.name} takes none"
    if videos and not spec.video_frames:
        return "has a video, and no frame limit is set (--video-frames; ms-swift's FPS_MAX_FRAMES): its frames are not counted"
    if record.get("audios"):
        return "has audio, whose tokens are not counted"
    if record.get("objects"):
        return "has grounding objects, which ms-swift's template writes into the text: not counted"
    return None


def image_size(path: Path) -> tuple[int, int]:
    try:
        from PIL import Image
    except ImportError:
        raise UsageError("--dataset", "reading the images' sizes needs Pillow", install_hint("vision")) from None

    with Image.open(path) as image:
        size = image.size
        image.verify()  # reads the whole file: a truncated or corrupt image fails here, not in training
    return size


def strip_tags(text: str) -> str:
    for tag in MEDIA_TAGS:
        text = text.replace(tag, "")
    return text
