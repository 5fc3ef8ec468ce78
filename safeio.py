"""
One writer for everything written: checkpoints, shards and meta.json, exports, locks, plots.

- atomic_write: a temp file in the same folder (created anew, never through a symlink), written,
  flushed and fsync'ed, renamed over the destination (a rename replaces a symlink there instead of
  writing through it), then the folder fsync'ed so the rename itself survives a power cut. At every
  moment the old or the new file is complete under the name; a failure removes the temp file and
  raises the OSError with the destination's path, so the one line names it.
- open_lock: a lock file opened without following a symlink, refused unless it is a plain file, so
  a planted link cannot make a lock truncate the file it points to.
- Recorder: a file wrapper that remembers the OSError behind a library's own error (torch's zip
  writer reports a full disk as "unexpected pos"), so the one line can say what really happened.
"""

import errno
import os
import stat

from configurator import UserError

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class Recorder:
    """A binary file that remembers the first OSError of its writes (libraries replace it with theirs)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name):
        return getattr(self.f, name)


def fsync_dir(folder):
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return  # a folder that cannot be opened for reading (some platforms): the rename stands anyway
    try:
        os.fsync(fd)
    except OSError:
        pass  # file systems without directory fsync
    finally:
        os.close(fd)


def create_new(path, mode=0o644):
    """Open path for writing as a new file: a stale file of that name (ours, from a killed run) is
    removed first, and a symlink there is removed, never followed."""
    if os.path.lexists(path):
        os.unlink(path)
    return open(path, "xb", opener=lambda p, flags: os.open(p, flags | NOFOLLOW, mode))


def atomic_write(path, write, tmp_suffix=".tmp", fsync=True):
    """write(f) into path + tmp_suffix, then rename it over path (see the module's docstring).
    A library error during write whose cause was an OSError (a full disk) is raised as that OSError."""
    tmp = path + tmp_suffix
    try:
        with create_new(tmp) as raw:
            f = Recorder(raw)
            try:
                write(f)
            except OSError:
                raise
            except Exception as e:
                if f.error is not None:
                    raise f.error from None
                raise OSError(errno.EIO, f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}",
                              path) from None
            raw.flush()
            if fsync:
                os.fsync(raw.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        except OSError:
            pass
        if e.filename is None or e.filename == tmp:
            e.filename = path
        raise e from None
    except BaseException:  # Ctrl-C, SIGTERM: no half-written temp file stays
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(os.path.dirname(path))


def write_text(path, text, fsync=True):
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), fsync=fsync)


def open_lock(path):
    """A lock file opened read-write (created if absent) without following a symlink; a symlink, a
    folder or a device in its place is refused in one line (remove it: the lock is ours to make)."""
    flags = os.O_CREAT | NOFOLLOW | getattr(os, "O_NONBLOCK", 0)  # non-blocking: a FIFO planted there cannot hang us
    try:
        f = open(path, "r+", encoding="utf-8", errors="replace", opener=lambda p, fl: os.open(p, fl | flags, 0o644))
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK) or os.path.islink(path):
            raise UserError(f"lock file {path} is a symbolic link: a lock is a plain file this program makes, and "
                            f"writing it would overwrite what the link points to; remove the link") from None
        if e.errno == errno.EISDIR:
            raise UserError(f"lock file {path} is a folder: remove it (a lock is a plain file this program "
                            f"makes)") from None
        raise
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise UserError(f"lock file {path} is not a plain file: remove it (a lock is a plain file this program makes)")
    return f


def free_bytes(folder):
    try:
        st = os.statvfs(folder or ".")
        return st.f_bavail * st.f_frsize
    except (OSError, AttributeError):
        return None


def library_write_error(e, path, need_bytes=None):
    """An OSError for a library's write failure that is not one (safetensors' SafetensorError): a full
    disk when the folder has less room than the file needs, else an I/O error with the library's words."""
    if isinstance(e, OSError):
        return e
    free = free_bytes(os.path.dirname(path))
    if need_bytes is not None and free is not None and free < need_bytes:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    return OSError(errno.EIO, f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}", path)


SCRATCH_MARKER = ".nanogpt-scratch"  # in a folder this program made for scratch work, and may remove


class ScratchDir:
    """A scratch folder that is removed afterwards only because this program made it: `path` itself when
    it does not exist yet (or is one we made before, by the marker inside), else a new folder inside it,
    so that an existing folder of the user's is never deleted (bench.py --work_dir)."""

    def __init__(self, path):
        self.requested = path

    def __enter__(self):
        import tempfile
        path = self.requested
        if os.path.lexists(path) and not os.path.isfile(os.path.join(path, SCRATCH_MARKER)):
            if not os.path.isdir(path) or os.path.islink(path):
                raise UserError(f"work_dir {path} exists and is not a folder: choose another --work_dir")
            path = tempfile.mkdtemp(prefix="nanogpt-scratch-", dir=path)  # inside the user's folder, ours
        else:
            os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, SCRATCH_MARKER), "w") as f:
            f.write("made by nanogpt-style bench.py for scratch work; removed when it ends\n")
        self.path = path
        return path

    def __exit__(self, *exc):
        import shutil
        if os.path.isfile(os.path.join(self.path, SCRATCH_MARKER)):  # still ours
            shutil.rmtree(self.path, ignore_errors=True)
