//! AWS, emulated: moto's server (a real SSM and DynamoDB API emulator), and
//! a small counting front before it that can also play an outage
//! (throttling or 500s).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::Launch;

pub struct Moto {
    pub url: String,
    _child: Option<Child>,
}

pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        if let Ok(url) = std::env::var("MOTO_URL") {
            return Moto { url, _child: None };
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // One request at a time, as DynamoDB serializes an item's writes
        // (see scripts/moto_serial.py).
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/moto_serial.py");
        let child = Command::new("python3")
            .args([script, "127.0.0.1", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is needed for moto: run scripts/test, or pip install 'moto[server]'");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            url: format!("http://127.0.0.1:{port}"),
            _child: Some(child),
        }
    })
}

pub const PASS: u8 = 0;
pub const THROTTLE: u8 = 1;
pub const FAIL: u8 = 2;

/// A front for moto that counts GetParameter calls and can fail on demand.
pub struct Front {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    gets: Arc<AtomicU32>,
}

impl Front {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(PASS));
        let gets = Arc::new(AtomicU32::new(0));
        let (m, g) = (mode.clone(), gets.clone());
        let target = moto().url.clone();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (m, g, target, client) = (m.clone(), g.clone(), target.clone(), client.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<Incoming>| {
                        let (m, g, target, client) =
                            (m.clone(), g.clone(), target.clone(), client.clone());
                        async move { Ok::<_, Infallible>(relay(req, &m, &g, &target, &client).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, mode, gets }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    pub fn gets(&self) -> u32 {
        self.gets.load(Ordering::SeqCst)
    }
}

async fn relay(
    req: hyper::Request<Incoming>,
    mode: &AtomicU8,
    gets: &AtomicU32,
    target: &str,
    client: &reqwest::Client,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    if parts
        .headers
        .get("x-amz-target")
        .is_some_and(|t| t == "AmazonSSM.GetParameter")
    {
        gets.fetch_add(1, Ordering::SeqCst);
    }
    let fail = |status: u16, kind: &str| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amzn-errortype", kind)
            .body(Full::new(Bytes::from(format!(
                "{{\"__type\":\"{kind}\",\"message\":\"front says {kind}\"}}"
            ))))
            .unwrap()
    };
    match mode.load(Ordering::SeqCst) {
        THROTTLE => return fail(400, "ThrottlingException"),
        FAIL => return fail(500, "InternalServerError"),
        _ => {}
    }
    let mut forward = client
        .request(parts.method, format!("{target}{}", parts.uri.path()))
        .body(body);
    for (k, v) in &parts.headers {
        if k != "host" {
            forward = forward.header(k, v);
        }
    }
    let answer = forward.send().await.unwrap();
    let mut response = hyper::Response::builder().status(answer.status().as_u16());
    for (k, v) in answer.headers() {
        if k != "transfer-encoding" && k != "connection" {
            response = response.header(k, v);
        }
    }
    response
        .body(Full::new(answer.bytes().await.unwrap()))
        .unwrap()
}

/// The environment that points the AWS SDK at an emulator, with test credentials.
pub fn aws_vars(endpoint: &str) -> [(&'static str, String); 6] {
    [
        ("AWS_ENDPOINT_URL_SSM", endpoint.to_owned()),
        ("AWS_ENDPOINT_URL_DYNAMODB", endpoint.to_owned()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

pub fn aws_env(launch: Launch, endpoint: &str) -> Launch {
    aws_vars(endpoint)
        .iter()
        .fold(launch, |launch, (k, v)| launch.env(k, v))
}
