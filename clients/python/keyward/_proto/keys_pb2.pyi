import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RotationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROTATION_STATE_UNSPECIFIED: _ClassVar[RotationState]
    STEADY: _ClassVar[RotationState]
    STAGED: _ClassVar[RotationState]
    PROMOTED: _ClassVar[RotationState]
ROTATION_STATE_UNSPECIFIED: RotationState
STEADY: RotationState
STAGED: RotationState
PROMOTED: RotationState

class KeyRef(_message.Message):
    __slots__ = ("environment", "name")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    environment: str
    name: str
    def __init__(self, environment: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class GetKeyRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: KeyRef
    def __init__(self, key: _Optional[_Union[KeyRef, _Mapping]] = ...) -> None: ...

class KeyVersion(_message.Message):
    __slots__ = ("version", "secret", "fingerprint", "created_at", "expires_at")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    version: int
    secret: bytes
    fingerprint: str
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, version: _Optional[int] = ..., secret: _Optional[bytes] = ..., fingerprint: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class KeySet(_message.Message):
    __slots__ = ("key", "generation", "primary", "fallback", "state")
    KEY_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    key: KeyRef
    generation: int
    primary: KeyVersion
    fallback: KeyVersion
    state: RotationState
    def __init__(self, key: _Optional[_Union[KeyRef, _Mapping]] = ..., generation: _Optional[int] = ..., primary: _Optional[_Union[KeyVersion, _Mapping]] = ..., fallback: _Optional[_Union[KeyVersion, _Mapping]] = ..., state: _Optional[_Union[RotationState, str]] = ...) -> None: ...

class WatchKeysRequest(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyRef]
    def __init__(self, keys: _Optional[_Iterable[_Union[KeyRef, _Mapping]]] = ...) -> None: ...

class KeyEvent(_message.Message):
    __slots__ = ("key_set", "reason")
    KEY_SET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    key_set: KeySet
    reason: str
    def __init__(self, key_set: _Optional[_Union[KeySet, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class AuthFailureReport(_message.Message):
    __slots__ = ("key", "version", "status_code", "service", "detail", "misdirected_to")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    MISDIRECTED_TO_FIELD_NUMBER: _ClassVar[int]
    key: KeyRef
    version: int
    status_code: int
    service: str
    detail: str
    misdirected_to: str
    def __init__(self, key: _Optional[_Union[KeyRef, _Mapping]] = ..., version: _Optional[int] = ..., status_code: _Optional[int] = ..., service: _Optional[str] = ..., detail: _Optional[str] = ..., misdirected_to: _Optional[str] = ...) -> None: ...

class AuthFailureAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KeyUseReport(_message.Message):
    __slots__ = ("key", "version", "service", "successes")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SUCCESSES_FIELD_NUMBER: _ClassVar[int]
    key: KeyRef
    version: int
    service: str
    successes: int
    def __init__(self, key: _Optional[_Union[KeyRef, _Mapping]] = ..., version: _Optional[int] = ..., service: _Optional[str] = ..., successes: _Optional[int] = ...) -> None: ...

class KeyUseAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
