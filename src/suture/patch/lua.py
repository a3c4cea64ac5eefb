"""rpm's ``<lua>`` scriptlets, run in an embedded Lua 5.4 confined to the image root.

rpm runs a scriptlet whose interpreter is ``<lua>`` in its own embedded Lua (chrooted
into the root it installs to) with its ``posix`` and ``rpm`` extension modules. Here
the Lua runs in this process (``lupa``'s Lua 5.4) in an environment built from a
whitelist: no ``load``/``loadfile``/``dofile``/``require``/``package``, no ``debug``,
no ``io.popen``/``io.tmpfile``, no ``string.dump``, and no access to Python objects.
Source is loaded as text only (no bytecode).

Files: every path is resolved inside ``root`` as a chroot would (symlinks and ``..``
never leave it; :func:`~suture.oci.extract.resolve_in_root`), relative paths from a
working directory that starts at ``/`` (``posix.chdir`` moves it, inside the root).

Programs (``rpm.execute``, ``os.execute`` as ``/bin/sh -c``, and ``posix.fork`` then
``posix.exec`` then ``posix.wait``) run through ``spawn``: the same sandbox the shell
scriptlets use. A fork cannot be made in-process, so ``posix.fork()`` returns 0 (the
"child" branch runs), ``posix.exec`` in that branch runs the program to completion and
returns 0, and ``posix.wait`` returns its status; this gives the same result as rpm for
the idiom ``if pid == 0 then posix.exec(...) elseif pid > 0 then posix.wait(pid) end``
that glibc's %post used. ``posix.exec`` without a fork, a second fork before the exec,
or a scriptlet that ends between fork and exec fails the job.

``arg`` is what rpm 4.16-4.19 give: ``arg[1]`` the interpreter (``"<lua>"``, then any
options of ``-p <lua> ...``), then the scriptlet's numeric arguments as Lua numbers
(measured with rpm 4.18: ``%post`` of a fresh install has ``arg = {"<lua>", 1}``).

Time and memory: the job's timeout is checked every :data:`HOOK_EVERY` Lua
instructions (in every coroutine) and bounds each program run; Lua's heap is capped at
:data:`MAX_LUA_MEMORY`. A long single C call (a huge ``string.rep``) is bounded only
by the memory cap.
"""

from __future__ import annotations

import base64
import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lupa import lua54  # type: ignore[import-untyped]

from suture.distro.rpm.version import compare_evr, parse_evr
from suture.distro.scripts import ScriptJob
from suture.oci.extract import resolve_in_root
from suture.patch.sandbox import ScriptError

log = logging.getLogger(__name__)

MAX_LUA_MEMORY = 256 << 20
MAX_SOURCE = 4 << 20
HOOK_EVERY = 10_000
MAX_READ = 64 << 20  # one io read through the confined file functions

Spawn = Callable[[Sequence[str], Mapping[str, str], float], None]
"""Run argv in the sandbox over the root with an environment and a timeout; raise
:class:`~suture.patch.sandbox.ScriptError` unless it exits 0."""

# Directory macros of rpm's defaults (macros.in), for rpm.expand.
MACROS: dict[str, str] = {
    "_prefix": "/usr", "_exec_prefix": "/usr", "_bindir": "/usr/bin", "_sbindir": "/usr/sbin",
    "_libexecdir": "/usr/libexec", "_datadir": "/usr/share", "_sysconfdir": "/etc",
    "_sharedstatedir": "/var/lib", "_localstatedir": "/var", "_includedir": "/usr/include",
    "_infodir": "/usr/share/info", "_mandir": "/usr/share/man", "_docdir": "/usr/share/doc",
    "_rundir": "/run", "_unitdir": "/usr/lib/systemd/system", "_tmppath": "/var/tmp",
    "_var": "/var", "_usr": "/usr", "_dbpath": "/var/lib/rpm", "_rpmconfigdir": "/usr/lib/rpm",
}


class _Fatal(Exception):
    """Raised from a callback to stop the script for good (kept across ``pcall``)."""


_PRELUDE = r"""
local setup = ...
local load, sethook, gethook = load, debug.sethook, debug.gethook
local co_create, co_resume, co_status, co_running = coroutine.create, coroutine.resume,
    coroutine.status, coroutine.running
local error, select, type, pairs = error, select, type, pairs
local check = setup.check
local function hook()
  local why = check()
  if why then error(why, 0) end
end
local function copy(t, drop)
  local r = {}
  for k, v in pairs(t) do if not (drop and drop[k]) then r[k] = v end end
  return r
end
string.dump = nil  -- the string metatable's __index is this table: no bytecode out
local env = {}
for _, name in ipairs({"assert", "error", "getmetatable", "ipairs", "next", "pairs",
    "pcall", "rawequal", "rawget", "rawlen", "rawset", "select", "setmetatable",
    "tonumber", "tostring", "type", "xpcall", "_VERSION"}) do
  env[name] = _G[name]
end
env._G = env
-- A timeout or fatal error caught by pcall/xpcall/resume is raised again at once.
local function again(r)
  local why = check()
  if why then error(why, 0) end
  return table.unpack(r, 1, r.n)
end
local pcall_, xpcall_ = pcall, xpcall
env.pcall = function(...) return again(table.pack(pcall_(...))) end
env.xpcall = function(...) return again(table.pack(xpcall_(...))) end
env.string = copy(string)
env.table = copy(table)
env.math = copy(math)
env.utf8 = copy(utf8)
local co = copy(coroutine)
co.create = function(f)
  local c = co_create(f)
  sethook(c, hook, "", setup.every)
  return c
end
co.resume = function(...) return again(table.pack(co_resume(...))) end
co.wrap = function(f)
  local c = co.create(f)
  return function(...)
    local r = table.pack(co.resume(c, ...))
    if not r[1] then error(r[2], 0) end
    return table.unpack(r, 2, r.n)
  end
end
env.coroutine = co
env.print = setup.print
local real_open, real_lines, real_type = io.open, io.lines, io.type
local io_ = {}
local opened = {}  -- closed (so flushed) when the script ends, as rpm's exit would
io_.open = function(path, mode)
  mode = mode or "r"
  if type(path) ~= "string" and type(path) ~= "number" then
    error("bad argument #1 to 'open'", 2)
  end
  local host, err, code = setup.resolve(tostring(path), mode)
  if not host then return nil, err, code end
  local f, e, c = real_open(host, mode)
  if f then opened[#opened + 1] = f end
  return f, e, c
end
io_.lines = function(path, ...)
  if path == nil then return function() return nil end end
  local host, err = setup.resolve(tostring(path), "r")
  if not host then error(err, 2) end
  local it, a, b, f = real_lines(host, ...)
  opened[#opened + 1] = f
  return it, a, b, f
end
io_.close = function(f) if f then return f:close() end return true end
io_.type = real_type
local out = {write = function(self, ...) setup.output(...) return self end,
             flush = function(self) return self end,
             close = function() return true end,
             setvbuf = function() return true end}
io_.stdout, io_.stderr = out, out
io_.write = function(...) setup.output(...) return out end
io_.read = function() return nil end
io_.stdin = {read = function() return nil end,
             lines = function() return function() return nil end end,
             close = function() return true end}
io_.popen = function() error("io.popen is not available in suture's <lua> scriptlets", 2) end
env.io = io_
local os_ = {clock = os.clock, date = os.date, difftime = os.difftime, time = os.time}
for k, v in pairs(setup.os) do os_[k] = v end
env.os = os_
env.posix = setup.posix
env.rpm = setup.rpm
env.arg = setup.arg
sethook(hook, "", setup.every)
return function(source, name)
  local chunk, err = load(source, name, "t", env)
  if not chunk then error(err, 0) end
  local ok, e = pcall(chunk, table.unpack(setup.arg))
  sethook()
  for _, f in ipairs(opened) do
    if real_type(f) == "file" then pcall(f.close, f) end
  end
  if not ok then error(e, 0) end
end
"""


def _s(value: Any) -> str:
    """A Lua string (bytes) as text; numbers as Lua prints them."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if value is None:
        raise _LuaArgError("string expected, got nil")
    return str(value)


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class _LuaArgError(Exception):
    pass


_FILETYPES = ((stat.S_ISREG, "regular"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "link"),
              (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
              (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"))


def _perm_string(mode: int) -> str:
    chars = []
    for shift, special, lower, upper in ((6, stat.S_ISUID, "s", "S"), (3, stat.S_ISGID, "s", "S"),
                                         (0, stat.S_ISVTX, "t", "T")):
        bits = (mode >> shift) & 7
        chars.append("r" if bits & 4 else "-")
        chars.append("w" if bits & 2 else "-")
        if mode & special:
            chars.append(lower if bits & 1 else upper)
        else:
            chars.append("x" if bits & 1 else "-")
    return "".join(chars)


def _parse_mode(spec: str, current: int) -> int:
    """A mode as luaposix accepts it: octal, ``rwxr-xr-x``, or symbolic ``u+x,go-w``."""
    if spec and all(c in "01234567" for c in spec):
        return int(spec, 8) & 0o7777
    if len(spec) == 9 and all(c in "rwxsStT-" for c in spec):
        mode = 0
        for i, c in enumerate(spec):
            shift = 6 - (i // 3) * 3
            pos = i % 3
            if (c == "r" and pos == 0) or (c == "w" and pos == 1) or (c in "xst" and pos == 2):
                mode |= (4 >> pos) << shift
            if c in "sStT" and pos == 2:
                mode |= (stat.S_ISUID, stat.S_ISGID, stat.S_ISVTX)[i // 3]
        return mode
    mode = current & 0o7777
    for clause in spec.split(","):
        who_end = 0
        while who_end < len(clause) and clause[who_end] in "ugoa":
            who_end += 1
        who = clause[:who_end] or "a"
        if who_end >= len(clause) or clause[who_end] not in "+-=":
            raise ValueError(f"bad mode {spec!r}")
        op, perms = clause[who_end], clause[who_end + 1:]
        if any(c not in "rwxst" for c in perms):
            raise ValueError(f"bad mode {spec!r}")
        mask = 0
        for w in ("ugo" if "a" in who else who):
            shift = {"u": 6, "g": 3, "o": 0}[w]
            for c in perms:
                if c in "rwx":
                    mask |= {"r": 4, "w": 2, "x": 1}[c] << shift
                elif c == "s" and w in "ug":
                    mask |= stat.S_ISUID if w == "u" else stat.S_ISGID
                elif c == "t":
                    mask |= stat.S_ISVTX
            if op == "=":
                mode &= ~(7 << shift)
        mode = mode | mask if op in "+=" else mode & ~mask
    return mode


class _Runner:
    def __init__(self, job: ScriptJob, root: Path, env: Mapping[str, str], spawn: Spawn,
                 timeout: float) -> None:
        self.job = job
        self.root = root
        self.env = dict(env)
        self.spawn = spawn
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.cwd = ""  # root-relative
        self.umask = 0o022
        self.fatal: BaseException | None = None
        self.forked = False
        self.statuses: list[int] = []
        self.macros = dict(MACROS)
        self.output: list[str] = []
        self.next_files: list[str] | None = None
        self.runtime = lua54.LuaRuntime(
            register_eval=False, register_builtins=False, unpack_returned_tuples=True,
            encoding=None, max_memory=MAX_LUA_MEMORY, attribute_filter=self._no_attributes)

    @staticmethod
    def _no_attributes(obj: object, name: object, is_setting: bool) -> object:
        raise AttributeError("Python attributes are not available to Lua")

    # ------------------------------------------------------------------ helpers

    def rel(self, path: Any) -> str:
        text = _s(path)
        if not text.startswith("/"):
            text = f"{self.cwd}/{text}"
        return text

    def host(self, path: Any, *, follow: bool) -> Path:
        return resolve_in_root(self.root, self.rel(path), follow_last=follow)

    def guard(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` as a Lua function: OSError gives luaposix's ``nil, message, errno``;
        a fatal error stops the script for good."""
        def call(*args: Any) -> Any:
            if self.fatal is not None:
                raise _Fatal(str(self.fatal))
            try:
                return fn(*args)
            except OSError as exc:
                code = exc.errno or errno.EIO
                what = f"{_s(args[0])}: " if args and isinstance(args[0], bytes) else ""
                return None, _b(f"{what}{os.strerror(code)}"), code
            except _LuaArgError as exc:
                raise _Fatal(f"bad argument to '{name}': {exc}") from None
            except (ValueError, TypeError) as exc:
                raise _Fatal(f"{name}: {exc}") from None
            except ScriptError as exc:
                self.fatal = exc
                raise _Fatal(str(exc)) from None
            except Exception as exc:
                self.fatal = exc
                raise _Fatal(f"{name}: {exc}") from None
        return call

    def table(self, mapping: Mapping[str, Any]) -> Any:
        return self.runtime.table_from({_b(k): (_b(v) if isinstance(v, str) else v)
                                        for k, v in mapping.items()})

    def check(self) -> bytes | None:
        if self.fatal is not None:
            return _b(f"stopped: {self.fatal}")
        if time.monotonic() > self.deadline:
            self.fatal = ScriptError(self.job, exit_code=None, detail="Lua scriptlet",
                                     how=f"timed out after {self.timeout:g} s")
            return b"timed out"
        return None

    def say(self, *values: Any) -> None:
        line = "\t".join(_s(v) if isinstance(v, (bytes, int, float)) else
                         ("nil" if v is None else str(v).lower() if isinstance(v, bool) else
                          "<value>") for v in values)
        log.info("%s: %s", self.job.describe(), line)

    def write_out(self, *values: Any) -> None:
        log.info("%s: %s", self.job.describe(), "".join(_s(v) for v in values).rstrip("\n"))

    # ------------------------------------------------------------------ io / os

    def resolve_for_open(self, path: bytes, mode: bytes) -> Any:
        host = self.host(path, follow=True)
        if host.is_symlink():  # a loop or too deep: refuse rather than follow on the host
            return None, _b(f"{_s(path)}: {os.strerror(errno.ELOOP)}"), errno.ELOOP
        if host.is_dir() and not _s(mode).startswith("r"):
            return None, _b(f"{_s(path)}: {os.strerror(errno.EISDIR)}"), errno.EISDIR
        return _b(str(host))

    def os_remove(self, path: bytes) -> Any:
        host = self.host(path, follow=False)
        if host.is_dir() and not host.is_symlink():
            os.rmdir(host)
        else:
            os.unlink(host)
        return True

    def os_rename(self, old: bytes, new: bytes) -> Any:
        os.rename(self.host(old, follow=False), self.host(new, follow=False))
        return True

    def getenv(self, name: Any = None) -> Any:
        if name is None:
            return self.table(self.env)
        value = self.env.get(_s(name))
        return None if value is None else _b(value)

    def os_exit(self, *args: Any) -> Any:
        raise _LuaArgError("os.exit is not available in suture's <lua> scriptlets")

    def os_execute(self, command: Any = None) -> Any:
        if command is None:
            return True  # a shell is "available": it runs in the sandbox
        status = self.run([ "/bin/sh", "-c", _s(command)])
        if status == 0:
            return True, b"exit", 0
        return None, b"exit", status

    # ------------------------------------------------------------------ programs

    def find(self, program: str) -> str:
        if "/" in program:
            return program
        for directory in self.env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").split(":"):
            candidate = f"{directory}/{program}" if directory else program
            if resolve_in_root(self.root, candidate, follow_last=True).is_file():
                return candidate
        return program

    def run(self, argv: list[str]) -> int:
        """Run argv in the sandbox; its exit status (a ScriptError without one, such as a
        timeout, stops the script)."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.check()
            raise _Fatal("timed out")
        argv = [self.find(argv[0]), *argv[1:]]
        if not resolve_in_root(self.root, argv[0], follow_last=True).is_file():
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0])
        log.info("%s: running %s", self.job.describe(), " ".join(argv))
        try:
            self.spawn(argv, dict(self.env), left)
        except ScriptError as exc:
            if exc.exit_code is None:
                raise
            return exc.exit_code
        return 0

    def rpm_execute(self, path: Any, *args: Any) -> Any:
        status = self.run([_s(path), *(_s(a) for a in args)])
        if status == 0:
            return True
        return None, _b(f"exit code {status}"), status

    def fork(self) -> int:
        if self.forked:
            raise _LuaArgError("posix.fork() again before posix.exec() is not supported")
        self.forked = True
        return 0

    def exec_(self, path: Any, *args: Any) -> Any:
        if not self.forked:
            raise _LuaArgError("posix.exec() without posix.fork() would replace rpm itself: "
                               "not supported")
        self.forked = False
        if args and len(args) == 1 and not isinstance(args[0], (bytes, int, float)):
            args = tuple(args[0][i] for i in range(1, len(args[0]) + 1))  # a table of args
        self.statuses.append(self.run([_s(path), *(_s(a) for a in args)]))
        return 0

    def wait(self, pid: Any = None) -> Any:
        if not self.statuses:
            return None, _b(os.strerror(errno.ECHILD)), errno.ECHILD
        status = self.statuses.pop()  # the latest program run (an unwaited one is dropped)
        return 1, b"exited", status

    # ------------------------------------------------------------------ posix

    def p_stat(self, path: bytes, selector: Any = None) -> Any:
        st = os.stat(self.host(path, follow=True), follow_symlinks=False)
        kind = next((name for test, name in _FILETYPES if test(st.st_mode)), "?")
        info: dict[str, Any] = {
            "mode": _perm_string(st.st_mode), "ino": st.st_ino, "dev": st.st_dev,
            "nlink": st.st_nlink, "uid": st.st_uid, "gid": st.st_gid, "size": st.st_size,
            "atime": int(st.st_atime), "mtime": int(st.st_mtime), "ctime": int(st.st_ctime),
            "type": kind, "_mode": st.st_mode}
        if selector is not None:
            value = info.get(_s(selector))
            return _b(value) if isinstance(value, str) else value
        return self.table(info)

    def p_access(self, path: bytes, mode: Any = None) -> Any:
        want = _s(mode) if mode is not None else "f"
        flags = 0
        for c in want:
            flags |= {"r": os.R_OK, "w": os.W_OK, "x": os.X_OK, "f": os.F_OK}.get(c, 0)
        host = self.host(path, follow=True)
        if host.is_symlink() or not os.access(host, flags, follow_symlinks=False):
            raise FileNotFoundError(errno.ENOENT if not os.path.lexists(host) else errno.EACCES,
                                    "no access")
        return 0

    def p_mkdir(self, path: bytes) -> Any:
        os.mkdir(self.host(path, follow=False), 0o777 & ~self.umask)
        return 0

    def p_rmdir(self, path: bytes) -> Any:
        os.rmdir(self.host(path, follow=False))
        return 0

    def p_unlink(self, path: bytes) -> Any:
        os.unlink(self.host(path, follow=False))
        return 0

    def p_chmod(self, path: bytes, mode: Any) -> Any:
        host = self.host(path, follow=True)
        current = os.stat(host, follow_symlinks=False).st_mode
        spec = _s(mode) if isinstance(mode, bytes) else format(int(mode), "o")
        os.chmod(host, _parse_mode(spec, current), follow_symlinks=False)
        return 0

    def ids(self, value: Any, table: str) -> int:
        if value is None:
            return -1
        if isinstance(value, (int, float)):
            return int(value)
        name = _s(value)
        data = resolve_in_root(self.root, f"etc/{table}", follow_last=True)
        try:
            with open(data, "rb") as fh:
                for line in fh.read(4 << 20).decode("utf-8", "replace").splitlines():
                    fields = line.split(":")
                    if len(fields) > 2 and fields[0] == name and fields[2].isdigit():
                        return int(fields[2])
        except OSError:
            pass
        raise ValueError(f"no {'user' if table == 'passwd' else 'group'} {name!r} in the image")

    def p_chown(self, path: bytes, uid: Any = None, gid: Any = None) -> Any:
        host = self.host(path, follow=True)
        u, g = self.ids(uid, "passwd"), self.ids(gid, "group")
        if os.geteuid() != 0 and u in (-1, 0) and g in (-1, 0):
            # Not root: what the caller owns is reported as root's (see scripts.py).
            return 0
        os.chown(host, u, g, follow_symlinks=False)
        return 0

    def p_symlink(self, target: bytes, path: bytes) -> Any:
        os.symlink(_s(target), self.host(path, follow=False))
        return 0

    def p_readlink(self, path: bytes) -> Any:
        return _b(os.readlink(self.host(path, follow=False)))

    def p_link(self, old: bytes, new: bytes) -> Any:
        os.link(self.host(old, follow=False), self.host(new, follow=False),
                follow_symlinks=False)
        return 0

    def p_utime(self, path: bytes, mtime: Any = None, atime: Any = None) -> Any:
        now = time.time()
        m = now if mtime is None else float(mtime)
        a = m if atime is None and mtime is not None else (now if atime is None else float(atime))
        os.utime(self.host(path, follow=True), (a, m), follow_symlinks=False)
        return 0

    def p_dir(self, path: Any = None) -> Any:
        host = self.host(path if path is not None else b".", follow=True)
        names = [".", "..", *sorted(os.listdir(host))]
        return self.runtime.table_from([_b(n) for n in names])

    def p_files(self, path: Any = None) -> Any:
        names = iter(self.p_dir(path).values())
        return lambda *_: next(names, None)

    def p_getcwd(self) -> bytes:
        return _b("/" + self.cwd.strip("/"))

    def p_chdir(self, path: bytes) -> Any:
        host = self.host(path, follow=True)
        if not host.is_dir() or host.is_symlink():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        self.cwd = str(host.relative_to(self.root)).strip(".")
        return 0

    def p_setenv(self, name: bytes, value: Any = None, overwrite: Any = True) -> Any:
        key = _s(name)
        if value is None:
            self.env.pop(key, None)
        elif overwrite or key not in self.env:
            self.env[key] = _s(value)
        return 0

    def p_putenv(self, text: bytes) -> Any:
        key, _, value = _s(text).partition("=")
        self.env[key] = value
        return 0

    def p_umask(self, mode: Any = None) -> bytes:
        old = self.umask
        if mode is not None:
            spec = _s(mode) if isinstance(mode, bytes) else format(int(mode), "o")
            if spec and all(c in "01234567" for c in spec):
                self.umask = int(spec, 8) & 0o777
            else:
                self.umask = ~_parse_mode(spec, 0o777 & ~old) & 0o777
        return _b(_perm_string(0o777 & ~old))

    # ------------------------------------------------------------------ rpm

    def expand(self, text: Any) -> bytes:
        source = _s(text)
        out: list[str] = []
        i = 0
        while i < len(source):
            c = source[i]
            if c == "%" and i + 1 < len(source):
                nxt = source[i + 1]
                if nxt == "%":
                    out.append("%")
                    i += 2
                    continue
                if nxt == "{":
                    end = source.find("}", i + 2)
                    name = source[i + 2:end] if end > 0 else ""
                    optional = name.startswith("?")
                    key = name.lstrip("?!")
                    if end > 0 and key in self.macros:
                        out.append(self.macros[key])
                        i = end + 1
                        continue
                    if end > 0 and optional:
                        i = end + 1
                        continue
                else:
                    j = i + 1
                    while j < len(source) and (source[j].isalnum() or source[j] == "_"):
                        j += 1
                    if source[i + 1:j] in self.macros:
                        out.append(self.macros[source[i + 1:j]])
                        i = j
                        continue
            out.append(c)
            i += 1
        return _b("".join(out))

    def define(self, text: Any) -> Any:
        name, _, body = _s(text).strip().partition(" ")
        name = name.split("(")[0]
        self.macros[name] = body.strip()
        return None

    def undefine(self, name: Any) -> Any:
        self.macros.pop(_s(name), None)
        return None

    def isdefined(self, name: Any) -> Any:
        defined = _s(name) in self.macros
        return defined, False

    def vercmp(self, a: Any, b: Any) -> int:
        return compare_evr(parse_evr(_s(a)), parse_evr(_s(b)))

    def next_file(self) -> Any:
        if self.next_files is None:
            listing = resolve_in_root(self.root, self.job.path + ".paths", follow_last=True)
            try:
                with open(listing, "rb") as fh:
                    self.next_files = fh.read(MAX_READ).decode("utf-8", "surrogateescape"
                                                                ).splitlines()
            except OSError:
                self.next_files = []
        return _b(self.next_files.pop(0)) if self.next_files else None

    def refuse(self, what: str) -> Callable[..., Any]:
        def refused(*_: Any) -> Any:
            raise _LuaArgError(f"{what} is not available in suture's <lua> scriptlets")
        return refused

    # ------------------------------------------------------------------ setup

    def globals_setup(self, arg: Sequence[str | int]) -> Any:
        g = self.guard
        posix: dict[str, Callable[..., Any]] = {
            "stat": self.p_stat, "access": self.p_access, "mkdir": self.p_mkdir,
            "rmdir": self.p_rmdir, "unlink": self.p_unlink, "chmod": self.p_chmod,
            "chown": self.p_chown, "symlink": self.p_symlink, "readlink": self.p_readlink,
            "link": self.p_link, "utime": self.p_utime, "dir": self.p_dir,
            "files": self.p_files, "getcwd": self.p_getcwd, "chdir": self.p_chdir,
            "getenv": self.getenv, "setenv": self.p_setenv, "putenv": self.p_putenv,
            "umask": self.p_umask, "fork": self.fork, "exec": self.exec_, "wait": self.wait,
            "getpid": lambda: 2, "getuid": lambda: 0, "getgid": lambda: 0,
            "geteuid": lambda: 0, "getegid": lambda: 0,
            "_exit": lambda *_: None,  # only reached after an exec (see the module doc)
            "redirect2null": lambda *_: 0,
            "kill": self.refuse("posix.kill"), "sleep": lambda *_: 0,
        }
        rpm: dict[str, Callable[..., Any]] = {
            "expand": self.expand, "define": self.define, "undefine": self.undefine,
            "isdefined": self.isdefined, "vercmp": self.vercmp,
            "interactive": lambda *_: False, "execute": self.rpm_execute,
            "b64encode": lambda data, *_: base64.b64encode(bytes(data)),
            "b64decode": lambda data: base64.b64decode(bytes(data)),
            "next_file": self.next_file, "redirect2null": lambda *_: 0,
        }
        oslib: dict[str, Callable[..., Any]] = {
            "getenv": self.getenv, "remove": self.os_remove, "rename": self.os_rename,
                 "exit": self.os_exit, "execute": self.os_execute}
        table = self.runtime.table_from
        return table({
            b"check": self.check, b"every": HOOK_EVERY, b"print": g("print", self.say),
            b"output": g("io.write", self.write_out),
            b"resolve": g("io.open", self.resolve_for_open),
            b"posix": table({_b(k): g(f"posix.{k}", v) for k, v in posix.items()}),
            b"rpm": table({_b(k): g(f"rpm.{k}", v) for k, v in rpm.items()}),
            b"os": table({_b(k): g(f"os.{k}", v) for k, v in oslib.items()}),
            b"arg": table([_b(a) if isinstance(a, str) else a for a in arg]),
        })


def lua_arguments(job: ScriptJob) -> list[str | int]:
    """rpm's ``arg`` table for ``job``: the interpreter words, then its numeric
    arguments as numbers (rpm passes the install counts as Lua numbers)."""
    values: list[str | int] = list(job.interpreter or ("<lua>",))
    for a in job.args:
        values.append(int(a) if a.lstrip("-").isdigit() else a)
    return values


def run_lua(job: ScriptJob, root: Path, env: Mapping[str, str], spawn: Spawn,
            timeout: float) -> None:
    """Run the Lua scriptlet ``job`` (its source at ``job.path`` in ``root``) as rpm
    would, confined to ``root``; programs it runs go through ``spawn``. Raises
    :class:`~suture.patch.sandbox.ScriptError` if the script raises an error, times
    out, or runs a program that times out."""
    source_path = resolve_in_root(root, job.path, follow_last=True)
    try:
        with open(source_path, "rb") as fh:
            source = fh.read(MAX_SOURCE + 1)
    except OSError as exc:
        raise ScriptError(job, exit_code=None, detail=str(exc), how="could not start") from None
    if len(source) > MAX_SOURCE:
        raise ScriptError(job, exit_code=None, detail=f"more than {MAX_SOURCE} bytes",
                          how="could not start")
    runner = _Runner(job, root, env, spawn, timeout)
    name = _b(f"={job.script}({job.package})")
    try:
        start = runner.runtime.execute(_PRELUDE, runner.globals_setup(lua_arguments(job)))
        start(source, name)
    except _Fatal as exc:
        if isinstance(runner.fatal, ScriptError):
            raise runner.fatal from None
        raise ScriptError(job, exit_code=None, detail=str(exc), how="raised a Lua error") \
            from None
    except lua54.LuaMemoryError:
        raise ScriptError(job, exit_code=None, detail=f"more than {MAX_LUA_MEMORY} bytes",
                          how="ran out of Lua memory") from None
    except lua54.LuaError as exc:
        if isinstance(runner.fatal, ScriptError):
            raise runner.fatal from None
        message = str(exc).splitlines()[0] if str(exc) else "Lua error"
        raise ScriptError(job, exit_code=None, detail=message, how="raised a Lua error") \
            from None
    if isinstance(runner.fatal, ScriptError):
        raise runner.fatal
    if runner.forked:
        raise ScriptError(job, exit_code=None, detail="posix.fork() without posix.exec()",
                          how="is not supported")
