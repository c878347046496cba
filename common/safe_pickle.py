"""A bounded pickle interpreter that builds only what a checkpoint needs and calls nothing it names.

Python's own unpickler, even with an allow-listed `find_class`, has three faults for files from
strangers: what it builds is unbounded (a tuple nested 200,000 deep kills the process with a
segfault the first time something hashes or walks it; a few hundred KB can ask for gigabytes), it
applies BUILD to any object it holds (a file could rewrite a shared stand-in and change how every
later file is read), and it hashes whatever a file uses as a dict key. So we interpret the opcodes
ourselves, iteratively, over `pickletools.genops` (the standard library's opcode reader):

- every value comes from a table of stand-ins made for this load (nothing outlives the read);
- BUILD applies only to our own inert `Opaque` records and is ignored on dicts (OrderedDict's
  `_metadata`); anything else is refused by name;
- nesting depth, the number of objects, the pickle's size and integer sizes are bounded, and a
  container cannot be changed once it sits inside another (so no cycles, and depths stay exact);
- dict keys and set members must be plain scalars or flat tuples of them (hashing is then cheap).

Which globals are allowed follows A1111's modules/safe.py (RestrictedUnpickler.find_class):
collections.OrderedDict, torch._utils._rebuild_tensor_v2 / _rebuild_parameter, torch storage
types, numpy scalars and dtypes, _codecs.encode, pytorch_lightning's ModelCheckpoint, set.
"""

from __future__ import annotations

import io
import pickletools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from common.errors import CheckpointFileError
from common.tensors import TensorInfo

MAX_PICKLE_BYTES = 16 << 20  # a state dict's pickle is ~200 bytes a tensor: 16 MiB is ~80,000 tensors
MAX_OBJECTS = 500_000
MAX_DEPTH = 64
MAX_INT_BYTES = 16
MAX_DIMS = 32  # so sizes multiply to numbers that stay printable


@dataclass(frozen=True)
class StorageType:
    """A torch storage class named by the pickle (torch.FloatStorage …): only its dtype matters."""

    dtype: str


@dataclass(frozen=True)
class StorageRef:
    dtype: str
    key: str
    numel: int


@dataclass(frozen=True)
class PickledTensor(TensorInfo):
    storage: StorageRef | None = None
    offset: int = 0
    stride: tuple[int, ...] = ()

    @property
    def is_contiguous(self) -> bool:
        expected, step = [], 1
        for dim in reversed(self.shape):
            expected.append(step)
            step *= dim
        return self.numel <= 1 or tuple(reversed(expected)) == self.stride


class Opaque:
    """An allowed object we have no use for (a Lightning callback, a numpy scalar), or one whose
    recorded state a reader walks (a detector's modules: common/detector_file.py): kept inert. `kind`
    is the global that made it, when the reader asked to keep it."""

    __slots__ = ("args", "kind", "state")

    def __init__(self, args: tuple[object, ...], kind: str = "") -> None:
        self.args = args
        self.kind = kind
        self.state: object = None


@dataclass(frozen=True)
class Allowed:
    """A global the pickle may name: what calling it builds, and whether NEWOBJ may create it."""

    qualname: str
    call: Callable[[tuple[object, ...]], object] | None
    newobj: bool = False


# torch storage class name -> safetensors dtype name
STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "F64",
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
    "UntypedStorage": "U8",
}

_SCALARS = (str, bytes, int, float, bool, type(None))


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _rebuild_tensor(args: tuple[object, ...]) -> PickledTensor:
    if len(args) < 4:
        raise CheckpointFileError("a tensor in the pickle is missing its offset, size or stride")
    storage, offset, size, stride = args[:4]
    if not isinstance(storage, StorageRef):
        raise CheckpointFileError("a tensor in the pickle does not refer to a storage")
    if not _is_count(offset):
        raise CheckpointFileError(f"a tensor in the pickle has an invalid storage offset ({type(offset).__name__})")
    for what, value in (("size", size), ("stride", stride)):
        if not isinstance(value, tuple) or not all(_is_count(d) for d in value):
            raise CheckpointFileError(f"a tensor in the pickle has an invalid {what} (not non-negative integers)")
    assert isinstance(size, tuple) and isinstance(stride, tuple) and isinstance(offset, int)
    if len(size) != len(stride):
        raise CheckpointFileError("a tensor in the pickle has a stride that does not match its size")
    if len(size) > MAX_DIMS:
        raise CheckpointFileError(f"a tensor in the pickle has {len(size)} dimensions; at most {MAX_DIMS} are allowed")
    return PickledTensor(name="", dtype=storage.dtype, shape=size, storage=storage, offset=offset, stride=stride)


def _rebuild_parameter(args: tuple[object, ...]) -> object:
    if not args:
        raise CheckpointFileError("a parameter in the pickle holds no tensor")
    return args[0]


def _new_dict(args: tuple[object, ...]) -> dict[object, object]:
    out: dict[object, object] = {}
    if args:
        pairs = args[0]
        if len(args) > 1 or not isinstance(pairs, list | tuple):
            raise CheckpointFileError("an OrderedDict in the pickle is built from something other than pairs")
        for pair in pairs:
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise CheckpointFileError("an OrderedDict in the pickle is built from something other than pairs")
            out[_key(pair[0])] = pair[1]
    return out


def _new_set(args: tuple[object, ...]) -> set[object]:
    items = args[0] if args else ()
    if len(args) > 1 or not isinstance(items, list | tuple):
        raise CheckpointFileError("a set in the pickle is built from something other than a list")
    return {_key(item) for item in items}


def _codecs_encode(args: tuple[object, ...]) -> bytes:
    # numpy scalars pickle their raw bytes as latin-1 text; only plain encodings are honoured.
    text, encoding = (*args, "utf-8")[:2] if args else (None, None)
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise CheckpointFileError(f"pickle asks for _codecs.encode with {encoding!r}, which is not allowed")
    try:
        return text.encode(encoding)
    except UnicodeEncodeError:
        raise CheckpointFileError("pickle asks to encode text that the codec cannot represent") from None


def _opaque(args: tuple[object, ...]) -> Opaque:
    return Opaque(args)


_OPAQUE_NEW = Allowed("opaque", _opaque, newobj=True)

ALLOWED: dict[tuple[str, str], Allowed | StorageType] = {
    ("collections", "OrderedDict"): Allowed("collections.OrderedDict", _new_dict),
    ("torch._utils", "_rebuild_tensor_v2"): Allowed("torch._utils._rebuild_tensor_v2", _rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): Allowed("torch._utils._rebuild_parameter", _rebuild_parameter),
    ("torch.nn.modules.container", "ParameterDict"): Allowed("torch.nn.ParameterDict", _new_dict),
    ("builtins", "set"): Allowed("set", _new_set),
    ("__builtin__", "set"): Allowed("set", _new_set),
    ("_codecs", "encode"): Allowed("_codecs.encode", _codecs_encode),
    ("numpy.core.multiarray", "scalar"): _OPAQUE_NEW,
    ("numpy._core.multiarray", "scalar"): _OPAQUE_NEW,
    ("numpy", "dtype"): _OPAQUE_NEW,
    ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"): _OPAQUE_NEW,
    **{("torch", name): StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
}


def _key(value: object) -> object:
    """A dict key or set member: a scalar or a flat tuple of scalars, so hashing it costs little."""
    if isinstance(value, _SCALARS) or (isinstance(value, tuple) and all(isinstance(v, _SCALARS) for v in value)):
        return value
    raise CheckpointFileError(f"pickle uses a {type(value).__name__} as a dict key, which checkpoints never do")


class _Mark:
    """The MARK opcode's place on the stack."""


_MARK = _Mark()


class SafeUnpickler:
    """Interprets one pickle. Build a new one per load: it holds that load's memo and counters."""

    def __init__(
        self,
        data: bytes,
        persistent_load: Callable[[object], object] | None = None,
        *,
        max_objects: int = MAX_OBJECTS,
        max_depth: int = MAX_DEPTH,
        extra_globals: Callable[[str, str], Allowed | None] | None = None,
    ) -> None:
        if len(data) > MAX_PICKLE_BYTES:
            raise CheckpointFileError(f"pickle is {len(data):,} bytes, over the {MAX_PICKLE_BYTES:,}-byte limit")
        # Reads past the end just come back short, so a length prefix cannot make us allocate.
        self._stream = io.BytesIO(data)
        self._persistent_load = persistent_load
        self._extra_globals = extra_globals
        self._max_objects = max_objects
        self._max_depth = max_depth
        self._stack: list[object] = []
        self._marks: list[int] = []
        self._memo: dict[int, object] = {}
        # Bookkeeping by id(); `_alive` keeps every container we made alive so no id is reused.
        self._depth: dict[int, int] = {}
        self._sealed: set[int] = set()
        self._alive: list[object] = []
        self._objects = 0

    def load(self) -> object:
        try:
            for opcode, arg, _pos in pickletools.genops(self._stream):
                name = opcode.name
                if name == "STOP":
                    if len(self._stack) != 1 or self._marks:
                        raise CheckpointFileError("pickle is malformed: it stops with a broken stack")
                    return self._stack[0]
                self._step(name, arg)
        except CheckpointFileError:
            raise
        except MemoryError:
            raise CheckpointFileError("pickle is too large to read") from None
        except (ValueError, IndexError, KeyError, TypeError, OverflowError, UnicodeError) as e:
            raise CheckpointFileError(f"pickle is malformed: {type(e).__name__}: {_short(e)}") from None
        raise CheckpointFileError("pickle is malformed: it ends without a STOP")

    # --- the opcodes -----------------------------------------------------------------------------

    def _step(self, name: str, arg: Any) -> None:
        stack = self._stack
        if name in ("PROTO", "FRAME"):
            if name == "PROTO" and arg > 5:
                raise CheckpointFileError(f"pickle protocol {arg} is not supported")
        elif name == "MARK":
            self._marks.append(len(stack))
            stack.append(_MARK)
        elif name in _PLAIN:
            self._push(_PLAIN[name](arg))
        elif name in ("INT", "LONG", "LONG1", "LONG4", "BININT", "BININT1", "BININT2"):
            if isinstance(arg, int) and not isinstance(arg, bool) and arg.bit_length() > 8 * MAX_INT_BYTES:
                raise CheckpointFileError(f"pickle holds an integer over {MAX_INT_BYTES * 8} bits")
            self._push(arg)
        elif name in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE"):
            self._push(_checked_text(arg))
        elif name in ("STRING", "BINSTRING", "SHORT_BINSTRING"):
            self._push(_ascii(arg))
        elif name == "EMPTY_LIST":
            self._push_container([])
        elif name == "EMPTY_DICT":
            self._push_container({})
        elif name == "EMPTY_SET":
            self._push_container(set())
        elif name == "EMPTY_TUPLE":
            self._push(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            if len(stack) < n or any(item is _MARK for item in stack[-n:]):
                raise CheckpointFileError(f"pickle is malformed: {name} with too few items")
            items = tuple(stack[-n:])
            del stack[-n:]
            self._push_container(items, children=items)
        elif name == "TUPLE":
            items = tuple(self._pop_mark())
            self._push_container(items, children=items)
        elif name == "LIST":
            items = self._pop_mark()
            self._push_container(items, children=items)
        elif name == "DICT":
            items = self._pop_mark()
            self._push_container(self._pairs({}, items), children=items)
        elif name == "FROZENSET":
            items = self._pop_mark()
            self._push_container(frozenset(_key(i) for i in items), children=items)
        elif name == "APPEND":
            item = self._pop()
            self._insert(self._top(list), [item]).append(item)
        elif name == "APPENDS":
            items = self._pop_mark()
            self._insert(self._top(list), items).extend(items)
        elif name == "SETITEM":
            value, key = self._pop(), self._pop()
            target = self._insert(self._top(dict), [key, value])
            target[_key(key)] = value
        elif name == "SETITEMS":
            items = self._pop_mark()
            self._pairs(self._insert(self._top(dict), items), items)
        elif name == "ADDITEMS":
            items = self._pop_mark()
            target = self._insert(self._top(set), items)
            target.update(_key(i) for i in items)
        elif name == "POP":
            if stack and stack[-1] is _MARK:
                self._pop_mark()
            else:
                self._pop()
        elif name == "POP_MARK":
            self._pop_mark()
        elif name == "DUP":
            self._push(self._top(object))
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            self._memo[arg] = self._top(object)
        elif name == "MEMOIZE":
            self._memo[len(self._memo)] = self._top(object)
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in self._memo:
                raise CheckpointFileError(f"pickle is malformed: memo entry {arg} was never stored")
            stack.append(self._memo[arg])
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
            else:
                attr, module = self._pop(), self._pop()
                if not isinstance(module, str) or not isinstance(attr, str):
                    raise CheckpointFileError("pickle is malformed: STACK_GLOBAL without names")
            self._push(self._find_global(module, attr))
        elif name == "REDUCE":
            args, func = self._pop(), self._pop()
            self._call(func, args)
        elif name in ("NEWOBJ", "NEWOBJ_EX"):
            if name == "NEWOBJ_EX":
                self._pop()  # keyword arguments: Opaque keeps nothing of them
            args, cls = self._pop(), self._pop()
            if not (isinstance(cls, Allowed) and cls.newobj):
                raise CheckpointFileError(f"pickle asks to create {_describe(cls)} with {name}, which is not allowed")
            self._call(cls, args)
        elif name == "BUILD":
            state = self._pop()
            target = self._top(object)
            if isinstance(target, Opaque):
                self._insert(target, [state])
                target.state = state
            elif not isinstance(target, dict):  # OrderedDict's `_metadata`: nothing we need
                raise CheckpointFileError(f"pickle asks to change {_describe(target)} with BUILD; refused")
        elif name in ("PERSID", "BINPERSID"):
            pid = self._pop() if name == "BINPERSID" else arg
            if self._persistent_load is None:
                raise CheckpointFileError("pickle refers to outside data where none is expected")
            self._push(self._persistent_load(pid))
        else:  # EXT*, INST, OBJ, NEXT_BUFFER, READONLY_BUFFER: never in a torch checkpoint
            raise CheckpointFileError(f"pickle uses the {name} opcode, which checkpoints never need; refused")

    def _find_global(self, module: str, name: str) -> Allowed | StorageType:
        found = ALLOWED.get((module, name))
        if found is None and self._extra_globals is not None:
            found = self._extra_globals(module, name)
        if found is None:
            raise CheckpointFileError(
                f"unsafe pickle: it asks for {module[:80]}.{name[:80]}, which is not on the allow-list; nothing was run"
            )
        return found

    # --- bookkeeping -----------------------------------------------------------------------------

    def _count(self) -> None:
        self._objects += 1
        if self._objects > self._max_objects:
            raise CheckpointFileError(f"pickle builds more than {self._max_objects:,} objects; refused")

    def _push(self, value: object) -> None:
        self._count()
        self._stack.append(value)

    def _push_container(self, value: object, children: Iterable[object] = ()) -> None:
        depth = 1
        for child in children:
            self._seal(child)
            depth = max(depth, self._depth.get(id(child), 0) + 1)
        self._check_depth(depth)
        self._depth[id(value)] = depth
        self._alive.append(value)
        self._push(value)

    def _seal(self, child: object) -> None:
        if id(child) in self._depth:
            self._sealed.add(id(child))

    def _insert(self, target: Any, children: Iterable[object]) -> Any:
        """Check that `children` may go into `target`, and record the new depth."""
        if id(target) in self._sealed:
            raise CheckpointFileError("pickle changes a container after placing it in another; refused")
        depth = self._depth.get(id(target), 1)
        for child in children:
            if child is target:
                raise CheckpointFileError("pickle puts a container inside itself; refused")
            self._count()
            self._seal(child)
            depth = max(depth, self._depth.get(id(child), 0) + 1)
        self._check_depth(depth)
        if id(target) not in self._depth:
            self._alive.append(target)
        self._depth[id(target)] = depth
        return target

    def _check_depth(self, depth: int) -> None:
        if depth > self._max_depth:
            raise CheckpointFileError(f"pickle nests objects more than {self._max_depth} deep; refused")

    def _pairs(self, target: dict[object, object], items: list[object]) -> dict[object, object]:
        if len(items) % 2:
            raise CheckpointFileError("pickle is malformed: a dict with an odd number of keys and values")
        for i in range(0, len(items), 2):
            target[_key(items[i])] = items[i + 1]
        return target

    def _call(self, func: object, args: object) -> None:
        if not isinstance(func, Allowed) or func.call is None:
            raise CheckpointFileError(f"pickle asks to call {_describe(func)}, which is not callable; refused")
        if not isinstance(args, tuple):
            raise CheckpointFileError(f"pickle calls {func.qualname} without an argument tuple")
        result = func.call(args)
        if isinstance(result, Opaque | dict | set):
            self._push_container(result, children=args)
        else:
            if isinstance(result, PickledTensor):
                for child in args:
                    self._seal(child)
            self._push(result)

    def _pop(self) -> object:
        if not self._stack or self._stack[-1] is _MARK:
            raise CheckpointFileError("pickle is malformed: it takes from an empty stack")
        return self._stack.pop()

    def _top(self, kind: type) -> Any:
        if not self._stack or not isinstance(self._stack[-1], kind) or self._stack[-1] is _MARK:
            found = _describe(self._stack[-1]) if self._stack else "nothing"
            raise CheckpointFileError(f"pickle is malformed: expected a {kind.__name__}, found {found}")
        return self._stack[-1]

    def _pop_mark(self) -> list[object]:
        if not self._marks:
            raise CheckpointFileError("pickle is malformed: no MARK to return to")
        start = self._marks.pop()
        items = self._stack[start + 1 :]
        del self._stack[start:]
        return items


_PLAIN: dict[str, Callable[[Any], object]] = {
    "NONE": lambda _: None,
    "NEWTRUE": lambda _: True,
    "NEWFALSE": lambda _: False,
    "FLOAT": float,
    "BINFLOAT": float,
    "BINBYTES": bytes,
    "SHORT_BINBYTES": bytes,
    "BINBYTES8": bytes,
    "BYTEARRAY8": bytes,
}


def _checked_text(text: str) -> str:
    # pickle decodes with 'surrogatepass': a lone surrogate would break printing and SQLite later.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise CheckpointFileError("pickle holds text that is not valid Unicode (a lone surrogate)") from None
    return text


def _ascii(value: bytes | str) -> str:
    raw = value.encode("latin-1") if isinstance(value, str) else value
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise CheckpointFileError("pickle holds a Python 2 byte string that is not ASCII") from None


def _describe(value: object) -> str:
    if isinstance(value, Allowed):
        return value.qualname
    if isinstance(value, StorageType):
        return f"the torch {value.dtype} storage type"
    return f"a {type(value).__name__}"


def _short(e: Exception) -> str:
    text = str(e)
    return text if len(text) <= 120 else text[:117] + "…"


def safe_unpickle(
    data: bytes,
    persistent_load: Callable[[object], object] | None = None,
    extra_globals: Callable[[str, str], Allowed | None] | None = None,
) -> object:
    """What the pickle in `data` describes, built from stand-ins; CheckpointFileError if it is unsafe.
    `extra_globals` allows more names for one kind of file, each as an inert stand-in of our own."""
    return SafeUnpickler(data, persistent_load, extra_globals=extra_globals).load()
