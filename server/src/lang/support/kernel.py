def _k():
    # sandpool's Python context kernel: runs cells sent on stdin in one
    # persistent namespace. A cell arrives as a header line
    # "<cell id> <plot format> <artifact nonce> <start time> <length>
    # <traceparent> <tracestate>\n" and <length> bytes of code; the
    # traceparent is "-" when the run has none, the tracestate is the rest of
    # the line (maybe empty, maybe with spaces). The cell sees them as
    # TRACEPARENT and TRACESTATE, those of the run that sent it. Output goes to stdout/stderr as the cell
    # produces it; at the end of the cell the kernel writes an artifact
    # report frame and a status frame to stderr. SIGINT interrupts the
    # running cell (KeyboardInterrupt) and is ignored between cells. The
    # status frame goes to both streams.
    import linecache, os, signal, sys, traceback
    nonce = os.environ['SANDPOOL_CONTEXT_NONCE']
    out_dir = os.environ.get('SANDPOOL_OUTPUT_DIR', '')
    g = sys.modules['__main__'].__dict__
    del g['_k']
    state = {'busy': False}

    def on_sigint(signum, frame):
        if state['busy']:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)

    def frame(tag, payload, n, fd=2):
        os.write(fd, ('\x1e%s:%s:%s:%s\x1e' % (tag, n, payload, n)).encode())

    buf = bytearray()

    def read_line():
        while b'\n' not in buf:
            chunk = os.read(0, 65536)
            if not chunk:
                return None
            buf.extend(chunk)
        i = buf.index(b'\n')
        line = bytes(buf[:i])
        del buf[:i + 1]
        return line.decode()

    def read_exact(n):
        while len(buf) < n:
            chunk = os.read(0, max(65536, n - len(buf)))
            if not chunk:
                break
            buf.extend(chunk)
        data = bytes(buf[:n])
        del buf[:n]
        return data

    def changed_since(t):
        for d, _, files in os.walk(out_dir):
            for f in files:
                try:
                    if os.lstat(os.path.join(d, f)).st_mtime >= t:
                        return 1
                except OSError:
                    pass
        return 0

    frame('sandpool-ready', str(os.getpid()), nonce)
    count = 0
    while True:
        header = read_line()
        if header is None:
            return
        fields = header.split(' ', 6)
        cell, fmt, art_nonce, since, length = fields[:5]
        for var, value in (('TRACEPARENT', fields[5] if len(fields) > 5 else '-'),
                           ('TRACESTATE', fields[6] if len(fields) > 6 else '')):
            if value in ('', '-'):
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        source = read_exact(int(length))
        count += 1
        name = '<cell %d>' % count
        text = source.decode('utf-8', 'replace')
        linecache.cache[name] = (len(text), None, text.splitlines(True), name)
        os.environ['SANDPOOL_RUN_ID'] = cell
        os.environ['SANDPOOL_PLOT_FORMAT'] = fmt
        status = 0
        state['busy'] = True
        try:
            exec(compile(source, name, 'exec'), g)
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException as e:
            status = 130 if isinstance(e, KeyboardInterrupt) else 1
            t = e.__traceback__
            while t is not None and not t.tb_frame.f_code.co_filename.startswith('<cell'):
                t = t.tb_next
            traceback.print_exception(type(e), e.with_traceback(t), t)
        finally:
            state['busy'] = False
        try:
            plots = sys.modules.get('sandpool_mpl')
            if plots is not None:
                plots.flush()
        except Exception:
            traceback.print_exc()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        frame('sandpool', changed_since(float(since)), art_nonce)
        # The engine carries stdout and stderr separately, in no fixed order
        # between them: the cell is over once both streams said so.
        frame('sandpool-cell', status, nonce, 1)
        frame('sandpool-cell', status, nonce)


_k()
