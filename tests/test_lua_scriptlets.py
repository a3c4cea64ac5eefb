"""rpm's ``<lua>`` scriptlets run by suture (suture.patch.lua), over a root holding a
static busybox; programs they start run in the real sandbox (bwrap). The last test
installs the same scriptlet with rpm 4.18 itself and compares the files left."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from suture.distro.scripts import ScriptJob
from suture.patch import sandbox
from suture.patch.lua import run_lua
from suture.patch.sandbox import ScriptError
from tests.fixtures.rpmbuild import build_rpm, have_rpm_tools, rpm_root

BUSYBOX = Path("/bin/busybox")
SCRIPT = "var/tmp/rpm-tmp.lua"
need_busybox = pytest.mark.skipif(not BUSYBOX.is_file(), reason="busybox-static not installed")


def _kind() -> str | None:
    kind, _why = sandbox.choose_sandbox("auto", quiet=True)
    return kind


def make_root(path: Path) -> Path:
    """A tiny image root: static busybox with sh/echo/ls links, /etc, /var/tmp."""
    for d in ("bin", "sbin", "etc", "var/tmp", "usr/bin", "tmp"):
        (path / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, path / "bin/busybox")
    for name in ("sh", "echo", "ls", "cat", "touch"):
        (path / "bin" / name).symlink_to("busybox")
    (path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (path / "etc/group").write_text("root:x:0:\n")
    return path


def run(root: Path, source: str, args: tuple[str, ...] = ("1",), timeout: float = 30.0,
        env: Mapping[str, str] | None = None) -> None:
    (root / SCRIPT).write_text(source)
    job = ScriptJob("demo-1-1.x86_64", "%post", SCRIPT, args, interpreter=("<lua>",))
    kind = _kind()

    def spawn(argv: Sequence[str], env2: Mapping[str, str], left: float) -> None:
        if kind is None:
            pytest.skip("no sandbox here")
        sandbox.run_one(job, sandbox.command(kind, root, dict(env2), list(argv)),
                        dict(env2) if kind == "chroot" else {}, left)

    run_lua(job, root, env or {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, spawn, timeout)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    if not BUSYBOX.is_file():
        pytest.skip("busybox-static not installed")
    return make_root(tmp_path / "root")


def test_files_and_posix(root: Path) -> None:
    run(root, """
assert(posix.mkdir("/etc/demo.d") == 0)
assert(posix.symlink("../etc/demo.d", "/usr/demo") == 0)
local f = assert(io.open("/usr/demo/conf", "w"))
f:write("a=1\\n", "b=2\\n")
f:close()
local lines = {}
for l in io.lines("/etc/demo.d/conf") do lines[#lines + 1] = l end
local st = posix.stat("/etc/demo.d")
local out = io.open("/etc/result", "w")
out:write(st.type, " ", st.mode, " ", posix.stat("/etc/demo.d/conf", "size"), " ",
          posix.readlink("/usr/demo"), " ", table.concat(lines, ","), "\\n")
out:write(rpm.vercmp("1.10", "1.9"), " ", rpm.vercmp("1:1.0", "2.0"), " ",
          rpm.vercmp("2.0-1", "2.0-1"), " ", rpm.expand("%{_sysconfdir}/x %{nope}"), "\\n")
out:write(#arg, " ", arg[1], " ", math.type(arg[2]), " ", arg[2], "\\n")
out:write(rpm.b64decode(rpm.b64encode("hi")), " ", tostring(rpm.interactive()), "\\n")
out:write(tostring(posix.access("/etc/none")), " ", posix.access("/etc/passwd", "r"), "\\n")
local ok, err = posix.mkdir("/etc/demo.d")
out:write(tostring(ok), " ", err, "\\n")
assert(os.rename("/etc/demo.d/conf", "/etc/demo.d/conf2"))
assert(posix.chmod("/etc/demo.d/conf2", "0600") == 0)
assert(posix.chown("/etc/demo.d/conf2", "root", "root") == 0)
assert(os.remove("/etc/passwd"))
out:close()
""")
    lines = (root / "etc/result").read_text().splitlines()
    assert lines[0] == "directory rwxr-xr-x 8 ../etc/demo.d a=1,b=2"
    assert lines[1] == "1 1 0 /etc/x %{nope}"
    assert lines[2] == "2 <lua> integer 1"
    assert lines[3] == "hi false"
    assert lines[4] == "nil 0"
    assert lines[5] == "nil /etc/demo.d: File exists"
    assert (root / "etc/demo.d/conf2").read_text() == "a=1\nb=2\n"
    assert (root / "etc/demo.d/conf2").stat().st_mode & 0o777 == 0o600
    assert (root / "usr/demo").is_symlink()
    assert not (root / "etc/passwd").exists()


def test_fork_exec_wait_idiom_runs_in_the_root(root: Path) -> None:
    # glibc's %post before rpm.execute existed
    run(root, """
function post_exec (program, ...)
  local pid = posix.fork ()
  if pid == 0 then
    assert (posix.exec (program, ...))
  elseif pid > 0 then
    posix.wait (pid)
  end
end
post_exec("/bin/sh", "-c", "echo ran > /x; echo $0 >> /x")
local pid = posix.fork()
if pid == 0 then
  posix.exec("/bin/sh", "-c", "exit 3")
  posix._exit(1)
end
local _, how, status = posix.wait(pid)
local sf = io.open("/status", "w") sf:write(how, " ", status) sf:close()
""")
    assert (root / "x").read_text() == "ran\n/bin/sh\n"
    assert (root / "status").read_text() == "exited 3"
    assert not Path("/x").exists()


def test_rpm_execute_and_os_execute_run_in_the_sandbox(root: Path) -> None:
    run(root, """
assert(rpm.execute("/bin/sh", "-c", "echo $FOO > /y"))
local ok, msg, code = rpm.execute("sh", "-c", "exit 4")
io.open("/r", "w"):write(tostring(ok), " ", code, "\\n")
assert(os.execute("touch /z") == true)
posix.setenv("FOO", "bar")
assert(rpm.execute("/bin/sh", "-c", "echo $FOO >> /y"))
""")
    assert (root / "y").read_text() == "\nbar\n"
    assert (root / "r").read_text() == "nil 4\n"
    assert (root / "z").is_file()


def test_escapes_stay_in_the_root(root: Path, tmp_path: Path) -> None:
    (root / "etc/passwd").write_text("inside\n")
    (root / "hostetc").symlink_to("/etc")
    (root / "up").symlink_to("../../../../../../../..")
    secret = tmp_path / "outside"
    secret.write_text("host file\n")
    run(root, f"""
local out = io.open("/result", "w")
out:write(io.open("/../../etc/passwd"):read("a"))
out:write(io.open("/hostetc/passwd"):read("a"))
out:write(tostring(io.open("/up{secret}")), "\\n")
assert(posix.symlink("{secret}", "/link") == 0)
out:write(tostring(io.open("/link")), "\\n")
local f = io.open("/hostetc/newfile", "w") f:write("x") f:close()
for _, name in ipairs({{"load", "loadfile", "dofile", "require", "package", "debug",
                        "python", "collectgarbage"}}) do
  out:write(name, "=", tostring(_G[name]), "\\n")
end
out:write("dump=", tostring(string.dump), " ", tostring(("").dump), "\\n")
out:write("popen=", tostring(pcall(io.popen, "id")), "\\n")
out:write("exit=", tostring(pcall(os.exit, 0)), "\\n")
out:write("posix.exec=", tostring(pcall(posix.exec, "/bin/sh")), "\\n")
out:close()
""")
    lines = (root / "result").read_text().splitlines()
    assert lines[:4] == ["inside", "inside", "nil", "nil"]
    assert (root / "etc/newfile").read_text() == "x"
    assert not Path("/etc/newfile").exists()
    assert secret.read_text() == "host file\n"
    assert lines[4:12] == [f"{n}=nil" for n in ("load", "loadfile", "dofile", "require",
                                                 "package", "debug", "python",
                                                 "collectgarbage")]
    assert lines[12:] == ["dump=nil nil", "popen=false", "exit=false", "posix.exec=false"]


@pytest.mark.parametrize("source", [
    "while true do end",
    "local co = coroutine.wrap(function() while true do end end) co()",
    "while true do pcall(function() while true do end end) end",
])
def test_infinite_loop_stopped_by_the_timeout(root: Path, source: str) -> None:
    start = time.monotonic()
    with pytest.raises(ScriptError, match="timed out after 1 s"):
        run(root, source, timeout=1.0)
    assert time.monotonic() - start < 10


def test_lua_error_fails_the_job(root: Path) -> None:
    with pytest.raises(ScriptError, match=r"demo-1-1.x86_64 %post 1 raised a Lua error: .*boom"):
        run(root, 'error("boom")')
    with pytest.raises(ScriptError, match="Lua error"):
        run(root, "this is not lua")
    with pytest.raises(ScriptError, match=r"posix\.fork"):
        run(root, "local pid = posix.fork()")
    with pytest.raises(ScriptError, match="Lua memory"):
        run(root, 'local t = {} for i = 1, 1e9 do t[i] = string.rep("x", 1000) .. i end')


def test_a_program_timing_out_fails_the_job(root: Path) -> None:
    if _kind() is None:
        pytest.skip("no sandbox here")
    with pytest.raises(ScriptError, match="timed out"):
        run(root, 'pcall(rpm.execute, "/bin/sh", "-c", "sleep 20")', timeout=1.0)


# --------------------------------------------------------------------------- against rpm

ORACLE = """\
posix.mkdir("/etc/oracle")
posix.symlink("/etc/oracle/a", "/etc/oracle/link")
local f = io.open("/etc/oracle/a", "w")
for i = 0, #arg do f:write(i, "=", type(arg[i]), ":", tostring(arg[i]), "\\n") end
f:write(rpm.vercmp("1.0~rc1", "1.0"), " ", rpm.vercmp("2", "10"), "\\n")
f:write(posix.stat("/etc/oracle", "type"), " ", posix.getcwd(), "\\n")
f:close()
posix.chmod("/etc/oracle/a", "rw-r-----")
local pid = posix.fork()
if pid == 0 then
  posix.exec("/bin/sh", "-c", "echo child > /etc/oracle/b")
elseif pid > 0 then
  posix.wait(pid)
end
rpm.execute("/bin/sh", "-c", "echo exec >> /etc/oracle/b")
"""


@need_busybox
@pytest.mark.skipif(not have_rpm_tools(), reason="rpm tools not installed")
def test_same_files_as_rpm(tmp_path: Path) -> None:
    if _kind() is None:
        pytest.skip("no sandbox here")
    spec = ("Name: luademo\nVersion: 1\nRelease: 1\nSummary: x\nLicense: MIT\n"
            "BuildArch: noarch\n%description\nx\n%files\n%post -p <lua>\n" + ORACLE)
    rpm_file = build_rpm(spec, tmp_path / "out", payload="gzip")[0]
    by_rpm = make_root(tmp_path / "by-rpm")
    rpm_root(by_rpm, "-i", "--nodeps", str(rpm_file))
    ours = make_root(tmp_path / "ours")
    run(ours, ORACLE, args=("1",))

    def tree(base: Path) -> dict[str, tuple[int, str]]:
        found = {}
        for dirpath, _dirs, files in os.walk(base / "etc/oracle"):
            for name in files:
                p = Path(dirpath) / name
                st = p.lstat()
                body = os.readlink(p) if p.is_symlink() else p.read_text()
                found[str(p.relative_to(base))] = (st.st_mode, body)
        return found

    assert tree(by_rpm)
    assert tree(ours) == tree(by_rpm)
