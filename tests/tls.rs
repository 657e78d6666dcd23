//! TLS to the upstream: the bundled roots, and `UPSTREAM_CA_FILE` for a CA
//! of one's own, against `openssl s_server` with a certificate from a CA
//! made here.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const TOKENS: &str = r#"{"tokens": [{"name": "t", "token": "tls-Token"}]}"#;

fn openssl(dir: &TempDir, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(&dir.0)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a certificate for `localhost` it signed.
fn certificates(dir: &TempDir) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=gateway test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    dir.write("ext.cnf", "subjectAltName=DNS:localhost\n");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

#[tokio::test]
async fn a_ca_of_ones_own_is_trusted_only_when_named() {
    let dir = TempDir::new();
    certificates(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            &port.to_string(),
            "-cert",
            "server.pem",
            "-key",
            "server.key",
            "-www",
            "-quiet",
        ])
        .current_dir(&dir.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s_server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let upstream = format!("https://localhost:{port}");
    let status = |gw: &Served| {
        let url = gw.url("/v1/models?token=tls-Token");
        async move { client().get(url).send().await.unwrap().status().as_u16() }
    };
    // The bundled roots do not know this CA: the upstream is refused.
    let strict = Launch::new(&upstream).tokens(TOKENS).serve().await;
    assert_eq!(status(&strict).await, 502);
    // Named in UPSTREAM_CA_FILE, it is trusted.
    let ca = dir.0.join("ca.pem");
    let trusting = Launch::new(&upstream)
        .tokens(TOKENS)
        .env("UPSTREAM_CA_FILE", ca.to_str().unwrap())
        .serve()
        .await;
    assert_eq!(status(&trusting).await, 200);
    // A file that holds no certificate stops start-up, naming the setting.
    let junk = dir.write("junk.pem", "not a certificate\n");
    let refused = Launch::new(&upstream)
        .tokens(TOKENS)
        .env("UPSTREAM_CA_FILE", junk.to_str().unwrap())
        .try_serve()
        .await
        .err()
        .expect("a CA file without certificates must not start")
        .to_string();
    assert!(refused.contains("UPSTREAM_CA_FILE"), "{refused}");
    let _ = server.kill();
    let _ = server.wait();
}
