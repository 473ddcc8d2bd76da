//! Python 3. Code goes to `python3 -c BOOTSTRAP MODE ARG`: as an argument
//! when it is small UTF-8 text and the run has no stdin (the fast path: no
//! stdin to attach), otherwise on standard input, where the bootstrap reads
//! exactly ARG bytes and leaves the rest to the program. Either way the code
//! is compiled as `main.py` and run as `__main__`, so tracebacks, pickling and
//! `if __name__ == "__main__"` behave as for a script.
//!
//! Figures: the matplotlib backend `sandpool_mpl` (placed in the container at
//! warm-up and selected by MPLBACKEND) saves them as files on `plt.show()`
//! and at exit. Artifacts: the bootstrap reports them itself at exit (see
//! `run::artifacts`), without a shell around the interpreter.

use bytes::Bytes;

use super::{CodePlan, InstallScope, Language, POOL_LIBRARY_DIR, Zygote};

pub struct Python;

/// Every run's environment (and the zygote's, which starts with it).
fn run_env() -> Vec<(String, String)> {
    vec![
        // Stream output as it is printed, also from child processes.
        ("PYTHONUNBUFFERED".into(), "1".into()),
        // No __pycache__ litter in the workspace or outputs.
        ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
    ]
}

/// Kept small: it is parsed on every run. Its names live in a function so that
/// only the user's own names end up in `__main__`. A loader with
/// `get_source` lets the traceback module show the lines of `main.py` (the
/// C-level printer reads source only from disk, hence `print_exception`);
/// frames of the bootstrap itself are cut from tracebacks. The artifact
/// report is registered first, so that it runs last among the exit handlers,
/// after figures still open were saved.
const BOOTSTRAP: &str = r#"def _m():
 import os,sys,atexit
 n=os.environ.get('SANDPOOL_ARTIFACT_NONCE')
 if n:
  def r(n=n,o=os.environ.get('SANDPOOL_OUTPUT_DIR',''),t=float(os.environ.get('SANDPOOL_RUN_START','0'))):
   c=0
   for d,_,fs in os.walk(o):
    for f in fs:
     try:
      if os.lstat(os.path.join(d,f)).st_mtime>=t:c=1;break
     except OSError:pass
    if c:break
   try:os.write(2,('\x1esandpool:%s:%d:%s\x1e'%(n,c,n)).encode())
   except OSError:pass
  atexit.register(r)
 if sys.argv[1]=='a':s=sys.argv[2].encode('utf-8','surrogateescape')
 else:
  k=int(sys.argv[2]);b=bytearray()
  while len(b)<k:
   c=os.read(0,k-len(b))
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

/// Prints the requirements not satisfied by what is installed (package
/// files always count as missing). Uses pip's own requirement parser.
const MISSING: &str = r#"import sys
from importlib import metadata
from pip._vendor.packaging.requirements import Requirement
for r in sys.argv[1:]:
    try:
        if r.startswith('/'):
            raise LookupError
        q = Requirement(r)
        if q.specifier and not q.specifier.contains(metadata.version(q.name), prereleases=True):
            raise LookupError
        metadata.version(q.name)
    except Exception:
        print(r)"#;

/// Where the support modules go (a tmpfs the reset leaves alone).
const SUPPORT_DIR: &str = "/opt/sandpool/python";

/// sandpool images carry a prebuilt matplotlib font cache; matplotlib's
/// config dir lives in /tmp (it must be writable), which every reset wipes,
/// so the cache is put back each time. Without it the first import of a
/// lease rebuilds it (slower, and it prints a notice to stderr).
const RESTORE_MPL_CACHE: &str = r#"if [ -n "${MPLCONFIGDIR:-}" ] && [ -d /usr/share/sandpool/mplcache ] && [ ! -e "$MPLCONFIGDIR" ]; then cp -R /usr/share/sandpool/mplcache "$MPLCONFIGDIR"; fi"#;

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
            env: run_env(),
        }
    }

    fn zygote(&self) -> Option<Zygote> {
        Some(Zygote {
            command: vec!["python3".into(), "-c".into()],
            code: include_str!("support/zygote.py"),
            env: run_env(),
        })
    }

    fn warm_up(&self) -> Option<&'static str> {
        Some(RESTORE_MPL_CACHE)
    }

    fn after_reset(&self) -> Option<&'static str> {
        Some(RESTORE_MPL_CACHE)
    }

    fn reports_artifacts(&self) -> bool {
        true
    }

    fn support_files(&self) -> &'static [(&'static str, &'static str)] {
        &[(
            "/opt/sandpool/python/sandpool_mpl.py",
            include_str!("support/sandpool_mpl.py"),
        )]
    }

    fn context_kernel(&self) -> Option<Vec<String>> {
        Some(vec![
            "python3".into(),
            "-u".into(),
            "-c".into(),
            include_str!("support/kernel.py").into(),
        ])
    }

    fn library_env(&self) -> Vec<(String, String)> {
        vec![
            // Support modules, then the pool's libraries; the lease's own
            // (pip --user) come through the user site as usual.
            (
                "PYTHONPATH".into(),
                format!("{SUPPORT_DIR}:{POOL_LIBRARY_DIR}/python"),
            ),
            ("MPLBACKEND".into(), "module://sandpool_mpl".into()),
        ]
    }

    fn missing_libraries_command(&self, packages: &[String]) -> Option<Vec<String>> {
        let mut argv = vec!["python3".to_string(), "-c".to_string(), MISSING.to_string()];
        argv.extend(packages.iter().cloned());
        Some(argv)
    }

    fn install_command(
        &self,
        packages: &[String],
        scope: InstallScope,
        index_url: Option<&str>,
    ) -> Option<Vec<String>> {
        let mut argv: Vec<String> = [
            "python3",
            "-m",
            "pip",
            "install",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--progress-bar",
            "off",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        match scope {
            InstallScope::Pool => {
                argv.extend(["--target".into(), format!("{POOL_LIBRARY_DIR}/python")]);
            }
            InstallScope::Lease => {
                // Debian marks its Python as externally managed; a user
                // install into the sandbox's home is what we want here.
                argv.extend(["--user".into(), "--break-system-packages".into()]);
            }
        }
        if packages.iter().all(|p| p.starts_with('/')) {
            // Package files only: no index, dependencies from beside them.
            argv.push("--no-index".into());
            let mut dirs: Vec<&str> = packages
                .iter()
                .filter_map(|p| {
                    p.rsplit_once('/')
                        .map(|(d, _)| if d.is_empty() { "/" } else { d })
                })
                .collect();
            dirs.dedup();
            for dir in dirs {
                argv.extend(["--find-links".into(), dir.to_string()]);
            }
        } else if let Some(url) = index_url {
            argv.extend(["--index-url".into(), url.to_string()]);
            // The operator chose this index; pip refuses plain http unless
            // told the host is trusted.
            if let Some(rest) = url.strip_prefix("http://") {
                let host = rest.split(['/', ':']).next().unwrap_or_default();
                argv.extend(["--trusted-host".into(), host.to_string()]);
            }
        }
        argv.push("--".into());
        argv.extend(packages.iter().cloned());
        Some(argv)
    }
}
