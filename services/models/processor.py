"""A Qwen3-VL processor for images only.

The stock ``Qwen3VLProcessor`` insists on a video processor, whose construction needs
torchvision; FADA Serve only ever sends single images, so this subclass declares no video
processor and is built from the tokenizer and image processor alone.
"""

from __future__ import annotations

from typing import Any

from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    @classmethod
    def get_attributes(cls) -> list[str]:
        return ["image_processor", "tokenizer"]

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         chat_template=chat_template, **kwargs)
