from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PexRequest(_message.Message):
    __slots__ = ("network_id", "max_peers")
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_PEERS_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    max_peers: int
    def __init__(self, network_id: _Optional[str] = ..., max_peers: _Optional[int] = ...) -> None: ...

class PexResponse(_message.Message):
    __slots__ = ("status", "signed_records", "retry_after_ms")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OK: _ClassVar[PexResponse.Status]
        WRONG_NETWORK: _ClassVar[PexResponse.Status]
        RATE_LIMITED: _ClassVar[PexResponse.Status]
    OK: PexResponse.Status
    WRONG_NETWORK: PexResponse.Status
    RATE_LIMITED: PexResponse.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SIGNED_RECORDS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    status: PexResponse.Status
    signed_records: _containers.RepeatedScalarFieldContainer[bytes]
    retry_after_ms: int
    def __init__(self, status: _Optional[_Union[PexResponse.Status, str]] = ..., signed_records: _Optional[_Iterable[bytes]] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...
