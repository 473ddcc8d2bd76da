# A pre-started Python for the resident runner (see sandbox::runner): the
# runner starts it ahead of the next run as `PREFIX... -c <this> PREFIX...`
# and, when the run comes, writes the run's request (working directory,
# stdin flag, argv, whole environment: length-prefixed fields, as in
# runner/protocol.rs) to descriptor 3 and closes it. The interpreter's
# start-up, the slow part of a short run, is then already done.
#
# It takes the run only where the result is what a fresh `python3 -c` of
# the run's argv would be: the argv starts with PREFIX, no variable that
# Python or the C library reads at start-up differs, and no site directory
# changed since it started (a library installed meanwhile, a .pth file).
# Otherwise it execs the run's argv itself, with the run's environment: a
# cold start, as if it had never been here. It is not forked from anything:
# its pid, hash seed, random state and threads are a fresh process's own.
#
# A pool may name modules to import ahead (SANDPOOL_PRELOAD, comma-
# separated, set by the server for the zygote alone): a run's own import of
# them is then free. With any, it takes only a run whose environment is the
# same as its own in everything but what the server sets per run (a module
# reads its environment at import, and no list of what it reads exists);
# and if one fails to import, no run at all.
#
# Its own names live in a function that removes itself from __main__, so
# that only the program's names end up there.


def _zygote():
    import os
    import site
    import sys

    prefix = [os.fsencode(a) for a in sys.argv[1:]]

    def site_dirs():
        # '' (the working directory) is looked up afresh at each import.
        found = []
        for path in [site.getusersitepackages()] + sys.path:
            if not path:
                continue
            try:
                found.append((path, os.stat(path).st_mtime_ns))
            except OSError:
                found.append((path, None))
        return found

    def read_at_start_up(name):
        return name.startswith((b"PYTHON", b"LC_", b"LD_", b"MALLOC_")) or name in (
            b"LANG",
            b"LANGUAGE",
            b"HOME",
            b"PATH",
            b"TZ",
            b"GLIBC_TUNABLES",
        )

    def cannot_start(name, error):
        # What the runner (and an engine) answers for a program that
        # cannot start.
        os.write(2, b"exec " + name + b": " + os.fsencode(error.strerror or "") + b"\n")
        os._exit(127 if error.errno == 2 else 126)

    preload = [m for m in os.environ.pop("SANDPOOL_PRELOAD", "").split(",") if m]
    before = site_dirs()
    preloaded = True
    for module in preload:
        try:
            __import__(module)
        except (Exception, SystemExit):
            preloaded = False
    request = bytearray()
    while True:
        chunk = os.read(3, 1 << 16)
        if not chunk:
            break
        request += chunk
    if not request:
        # The runner went away without a run.
        os._exit(0)
    os.close(3)
    fields = []
    at = 0
    while at + 4 <= len(request):
        size = int.from_bytes(request[at : at + 4], "big")
        fields.append(bytes(request[at + 4 : at + 4 + size]))
        at += 4 + size
    working_dir, has_stdin, argc = fields[0], fields[1] == b"1", int(fields[2])
    argv = fields[3 : 3 + argc]
    env = {}
    for entry in fields[3 + argc :]:
        name, _, value = entry.partition(b"=")
        env[name] = value

    try:
        if not has_stdin:
            null = os.open("/dev/null", os.O_RDONLY)
            if null != 0:
                os.dup2(null, 0)
                os.close(null)
        os.chdir(working_dir)
    except OSError as e:
        cannot_start(argv[0], e)

    own = os.environb
    def not_per_run(name):
        # What the server sets for each run (its id, its artifact watch,
        # its trace) and sandpool's own modules read when called.
        return not name.startswith(b"SANDPOOL_") and name not in (b"TRACEPARENT", b"TRACESTATE")

    compared = not_per_run if preload else read_at_start_up
    same_start = all(
        own.get(name) == env.get(name)
        for name in set(own) | set(env)
        if compared(name)
    )
    takes_it = (
        preloaded
        and same_start
        and len(argv) > len(prefix)
        and argv[: len(prefix)] == prefix
        and site_dirs() == before
    )
    if not takes_it:
        try:
            os.execvpe(argv[0], argv, env)
        except OSError as e:
            cannot_start(argv[0], e)

    own.clear()
    own.update(env)
    sys.argv = ["-c"] + [os.fsdecode(a) for a in argv[len(prefix) + 1 :]]
    del sys.modules["__main__"].__dict__["_zygote"]
    return os.fsdecode(argv[len(prefix)])


exec(compile(_zygote(), "<string>", "exec"))
