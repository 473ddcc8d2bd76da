//! Python 3. Code goes to `python3 -c BOOTSTRAP MODE ARG`: as an argument
//! when it is small UTF-8 text and the run has no stdin (the fast path: no
//! stdin to attach), otherwise on standard input, where the bootstrap reads
//! exactly ARG bytes and leaves the rest to the program. Either way the code
//! is compiled as `main.py` and run as `__main__`, so tracebacks, pickling and
//! `if __name__ == "__main__"` behave as for a script.

use bytes::Bytes;

use super::{CodePlan, Language};

pub struct Python;

/// Kept small: it is parsed on every run. Its names live in a function so that
/// only the user's own names end up in `__main__`. A loader with
/// `get_source` lets the traceback module show the lines of `main.py` (the
/// C-level printer reads source only from disk, hence `print_exception`);
/// frames of the bootstrap itself are cut from tracebacks.
const BOOTSTRAP: &str = r#"def _m():
 import os,sys
 if sys.argv[1]=='a':s=sys.argv[2].encode('utf-8','surrogateescape')
 else:
  n=int(sys.argv[2]);b=bytearray()
  while len(b)<n:
   c=os.read(0,n-len(b))
   if not c:break
   b+=c
  s=bytes(b)
 class Loader:
  def get_source(self,name):return s.decode('utf-8','replace')
 g=sys.modules['__main__'].__dict__
 del g['_m']
 g['__loader__']=Loader()
 sys.argv=['main.py']
 try:exec(compile(s,'main.py','exec'),g)
 except SystemExit:raise
 except BaseException as e:
  t=e.__traceback__
  while t is not None and t.tb_frame.f_code.co_filename!='main.py':t=t.tb_next
  e=e.with_traceback(t)
  if sys.excepthook is sys.__excepthook__:
   import traceback;traceback.print_exception(type(e),e,t)
  else:sys.excepthook(type(e),e,t)
  sys.exit(1)
_m()"#;

impl Language for Python {
    fn name(&self) -> &'static str {
        "python"
    }

    fn default_image(&self) -> &'static str {
        "sandpool/python:bookworm"
    }

    fn check(&self) -> (Vec<String>, &'static str) {
        (
            vec!["python3".into(), "-c".into(), "print('sandpool-ok')".into()],
            "sandpool-ok",
        )
    }

    fn plan(&self, code: &[u8], has_stdin: bool) -> CodePlan {
        let (argv, stdin_prefix) = match super::as_argument(code, has_stdin) {
            Some(text) => (vec!["a".to_string(), text.to_string()], Bytes::new()),
            None => (
                vec!["s".to_string(), code.len().to_string()],
                Bytes::copy_from_slice(code),
            ),
        };
        let mut full = vec![
            "python3".to_string(),
            "-c".to_string(),
            BOOTSTRAP.to_string(),
        ];
        full.extend(argv);
        CodePlan {
            argv: full,
            stdin_prefix,
            env: vec![
                // Stream output as it is printed, also from child processes.
                ("PYTHONUNBUFFERED".into(), "1".into()),
                // No __pycache__ litter in the workspace or outputs.
                ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
            ],
        }
    }
}
