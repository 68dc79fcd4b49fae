"""Adds ``NLORA`` to PEFT's closed ``PeftType`` enum, so adapter_config.json can say ``"peft_type": "NLORA"``.

PEFT's ``register_peft_method`` only accepts names already in ``PeftType`` (peft 0.20/0.21). Adding a
member is the smallest change that lets stock PEFT save, load and dispatch a third-party method by its
own type; the alternative, saving as ``"LORA"``, would make stock PEFT load the adapter as plain LoRA and
silently drop ``lora_N``. Without ``import nlora_plugin``, PEFT refuses ``"NLORA"`` with its own clear error.
"""

from __future__ import annotations

from peft.utils.peft_types import PeftType

NLORA_NAME = "NLORA"


def _add_enum_member(enum_cls: type, name: str) -> PeftType:
    """Create ``enum_cls.<name>`` (value == name) the way ``EnumType`` builds members, if absent."""
    if name in enum_cls._member_map_:
        return enum_cls._member_map_[name]
    member = str.__new__(enum_cls, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = enum_cls
    if hasattr(member, "_sort_order_"):
        member._sort_order_ = len(enum_cls._member_names_)
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[name] = member
    enum_cls._member_names_.append(name)
    type.__setattr__(enum_cls, name, member)
    return member


NLORA_PEFT_TYPE: PeftType = _add_enum_member(PeftType, NLORA_NAME)
