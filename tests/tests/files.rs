//! Upload, Download and ListArtifacts.

use sandpool_client::proto as pb;
use sandpool_tests::{TestServer, code_of, python_pool};
use sha2::{Digest, Sha256};
use tonic::Code;

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    for chunk in v.chunks_mut(16) {
        let r = rand::random::<u128>().to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip() {
    let server = TestServer::start().await;
    server.pool(python_pool("files")).await;
    let session = server.client.acquire("files").await.expect("acquire");

    let data = random_bytes(50 << 20);
    let digest = hex::encode(Sha256::digest(&data));
    let up = session
        .upload_with(
            "/sandbox/deep/dir/blob.bin",
            data.clone().into(),
            Some(0o750),
            false,
        )
        .await
        .expect("upload");
    assert_eq!(
        (up.size, up.sha256.as_str()),
        (data.len() as u64, digest.as_str())
    );
    let out = session
        .shell("sha256sum /sandbox/deep/dir/blob.bin | cut -d' ' -f1; stat -c %a /sandbox/deep/dir/blob.bin")
        .await
        .expect("check in the container");
    assert_eq!(out.stdout_text(), format!("{digest}\n750\n"));
    let (header, body) = session
        .download("/sandbox/deep/dir/blob.bin")
        .await
        .expect("download");
    assert_eq!(header.kind, pb::DownloadKind::File as i32);
    assert_eq!(header.mode, 0o750);
    assert_eq!(header.size, data.len() as u64);
    assert_eq!(hex::encode(Sha256::digest(&body)), digest);

    // A directory goes up and comes back as a tar.
    let mut builder = tar::Builder::new(Vec::new());
    for (name, content) in [("a.txt", "alpha"), ("sub/b.txt", "beta")] {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o640);
        h.set_cksum();
        builder
            .append_data(&mut h, name, content.as_bytes())
            .expect("tar entry");
    }
    let archive = builder.into_inner().expect("tar");
    session
        .upload_tar("/sandbox/tree", archive)
        .await
        .expect("upload tar");
    let out = session
        .shell("cat /sandbox/tree/a.txt /sandbox/tree/sub/b.txt")
        .await
        .expect("cat");
    assert_eq!(out.stdout_text(), "alphabeta");
    session
        .shell("ln -s /etc/passwd /sandbox/tree/link")
        .await
        .expect("symlink");
    let (header, body) = session
        .download("/sandbox/tree")
        .await
        .expect("download dir");
    assert_eq!(header.kind, pb::DownloadKind::Tar as i32);
    let mut archive = tar::Archive::new(&body[..]);
    let mut seen = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let path = entry
            .path()
            .expect("path")
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if entry.header().entry_type().is_symlink() {
            let target = entry
                .link_name()
                .expect("link")
                .expect("target")
                .to_string_lossy()
                .to_string();
            seen.push(format!("{path} -> {target}"));
        } else if entry.header().entry_type().is_file() {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).expect("read");
            seen.push(format!("{path}={text}"));
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        vec!["a.txt=alpha", "link -> /etc/passwd", "sub/b.txt=beta"],
        "links stay links"
    );

    // Artifacts: what runs wrote to the output directory.
    session
        .run_collect("open('/sandbox/outputs/result.csv', 'w').write('a,b\\n1,2\\n')\nimport os\nos.makedirs('/sandbox/outputs/plots', exist_ok=True)\nopen('/sandbox/outputs/plots/p.png', 'wb').write(b'\\x89PNG')")
        .await
        .expect("run");
    let artifacts = session.list_artifacts().await.expect("list");
    let names: Vec<(String, String, u64)> = artifacts
        .iter()
        .map(|a| (a.name.clone(), a.mime_type.clone(), a.size))
        .collect();
    assert!(
        names.contains(&("result.csv".into(), "text/csv".into(), 8)),
        "{names:?}"
    );
    assert!(
        names.contains(&("plots/p.png".into(), "image/png".into(), 4)),
        "{names:?}"
    );
    session.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paths_and_oversized_uploads_are_refused() {
    let mut config = sandpool_tests::empty_config();
    config.file_limits.max_upload_bytes = 1 << 20;
    let server = TestServer::start_with(config).await;
    server.pool(python_pool("paths")).await;
    let session = server.client.acquire("paths").await.expect("acquire");

    let err = session
        .download("/sandbox/missing.txt")
        .await
        .expect_err("missing");
    assert_eq!(code_of(&err), Code::NotFound, "{err}");
    for path in ["/etc/passwd", "relative.txt", "/sandbox/../etc/passwd"] {
        let err = session.download(path).await.expect_err("outside the roots");
        assert_eq!(code_of(&err), Code::InvalidArgument, "{path}: {err}");
        let err = session
            .upload(path, &b"x"[..])
            .await
            .expect_err("outside the roots");
        assert_eq!(code_of(&err), Code::InvalidArgument, "{path}: {err}");
    }
    session
        .shell("ln -s /etc/passwd /sandbox/escape")
        .await
        .expect("link");
    let err = session
        .download("/sandbox/escape")
        .await
        .expect_err("a link out of the roots");
    assert_eq!(code_of(&err), Code::InvalidArgument, "{err}");

    let err = session
        .upload("/sandbox/big.bin", random_bytes(2 << 20))
        .await
        .expect_err("over the upload cap");
    assert_eq!(code_of(&err), Code::InvalidArgument, "{err}");
    let out = session.shell("ls /sandbox").await.expect("ls");
    assert!(
        !out.stdout_text().contains("big.bin"),
        "no partial file: {}",
        out.stdout_text()
    );
    session.release().await.expect("release");
    server.stop().await;
}
