//! Package files and a package index the containers can reach: no index
//! is reachable from these machines, so tests build their own packages and
//! serve them from the host over the engine's bridge network.

use std::{
    io::Write,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::docker_cli;

/// A PEP 503 "simple" index serving the wheel, on all interfaces.
pub struct Index {
    child: Child,
    pub url: String,
}

impl Drop for Index {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn serve_index(dir: &std::path::Path, wheel: &std::path::Path) -> Index {
    serve_projects(dir, &[("sandpooldemo", wheel)])
}

/// An index of `(project, package file)` pairs.
pub fn serve_projects(dir: &std::path::Path, files: &[(&str, &std::path::Path)]) -> Index {
    for (project, file) in files {
        let project = dir.join("simple").join(project);
        std::fs::create_dir_all(&project).expect("index dir");
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        std::fs::copy(file, dir.join(&name)).expect("copy package");
        let mut page = std::fs::File::create(project.join("index.html")).expect("page");
        writeln!(
            page,
            "<html><body><a href=\"../../{name}\">{name}</a></body></html>"
        )
        .expect("write");
    }
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "0.0.0.0",
            "--directory",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("http server");
    // Containers reach the host at the bridge network's gateway.
    let gateway = bridge_gateway();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Index {
        child,
        url: format!("http://{gateway}:{port}/simple"),
    }
}

/// The host's address on Docker's default bridge (docker0).
pub fn bridge_gateway() -> String {
    let listed = docker_cli(&[
        "network",
        "inspect",
        "bridge",
        "--format",
        "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
    ]);
    if !listed.is_empty() {
        return listed;
    }
    // Docker 20.10 leaves the default bridge's gateway out of IPAM: ask the
    // interface.
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "docker0"])
        .output()
        .expect("ip");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_string)
        .expect("docker0 has an IPv4 address")
}

/// A fresh directory under the system's temporary directory.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sandpool-{tag}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A source distribution of package `name` (VALUE = 7) whose in-tree build
/// backend (no build requirements, so no index is needed to build it) runs
/// `hook` (Python, at four spaces) before it builds the wheel: what an
/// install script of a real package may do.
pub fn build_sdist(dir: &std::path::Path, name: &str, hook: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}-1.0.tar.gz"));
    let script = r#"
import io, sys, tarfile
name, hook, out = sys.argv[1], sys.argv[2], sys.argv[3]
backend = '''
import base64, hashlib, os, subprocess, sys, time, zipfile
def get_requires_for_build_wheel(config_settings=None):
    return []
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
%s
    files = {
        '%s/__init__.py': b'VALUE = 7\\n',
        '%s-1.0.dist-info/METADATA': b'Metadata-Version: 2.1\\nName: %s\\nVersion: 1.0\\n',
        '%s-1.0.dist-info/WHEEL': b'Wheel-Version: 1.0\\nGenerator: sandpool-tests\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n',
    }
    record = ''
    for n, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
        record += '%%s,sha256=%%s,%%d\\n' %% (n, digest, len(data))
    record += '%s-1.0.dist-info/RECORD,,\\n'
    files['%s-1.0.dist-info/RECORD'] = record.encode()
    wheel = '%s-1.0-py3-none-any.whl'
    with zipfile.ZipFile(os.path.join(wheel_directory, wheel), 'w') as z:
        for n, data in files.items():
            z.writestr(n, data)
    return wheel
''' % (hook, name, name, name, name, name, name, name)
members = {
    'pyproject.toml': '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
    'backend.py': backend,
    'PKG-INFO': 'Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n' % name,
}
with tarfile.open(out, 'w:gz') as t:
    for n, text in members.items():
        data = text.encode()
        info = tarfile.TarInfo('%s-1.0/%s' % (name, n))
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
"#;
    let status = Command::new("python3")
        .args(["-c", script, name, hook])
        .arg(&path)
        .status()
        .expect("python3");
    assert!(status.success(), "building the test sdist");
    path
}
