from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class StunServiceRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StunServiceResponse(_message.Message):
    __slots__ = ("addrs", "rfc5780")
    ADDRS_FIELD_NUMBER: _ClassVar[int]
    RFC5780_FIELD_NUMBER: _ClassVar[int]
    addrs: _containers.RepeatedScalarFieldContainer[bytes]
    rfc5780: bool
    def __init__(self, addrs: _Optional[_Iterable[bytes]] = ..., rfc5780: bool = ...) -> None: ...
