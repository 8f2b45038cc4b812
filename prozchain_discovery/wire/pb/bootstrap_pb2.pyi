from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BootstrapRequest(_message.Message):
    __slots__ = ("network_id", "max_peers")
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_PEERS_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    max_peers: int
    def __init__(self, network_id: _Optional[str] = ..., max_peers: _Optional[int] = ...) -> None: ...

class BootstrapResponse(_message.Message):
    __slots__ = ("status", "network_id", "observed_addr", "signed_records")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OK: _ClassVar[BootstrapResponse.Status]
        WRONG_NETWORK: _ClassVar[BootstrapResponse.Status]
        BUSY: _ClassVar[BootstrapResponse.Status]
    OK: BootstrapResponse.Status
    WRONG_NETWORK: BootstrapResponse.Status
    BUSY: BootstrapResponse.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_ADDR_FIELD_NUMBER: _ClassVar[int]
    SIGNED_RECORDS_FIELD_NUMBER: _ClassVar[int]
    status: BootstrapResponse.Status
    network_id: str
    observed_addr: bytes
    signed_records: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, status: _Optional[_Union[BootstrapResponse.Status, str]] = ..., network_id: _Optional[str] = ..., observed_addr: _Optional[bytes] = ..., signed_records: _Optional[_Iterable[bytes]] = ...) -> None: ...
