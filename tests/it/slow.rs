//! The slow suites: memory under 164 MB of bodies, and a 20,000-request load,
//! on the real binary (its RSS is what is measured). `cargo test` skips them;
//! `scripts/test` runs them with `cargo test --test it slow:: -- --ignored`.

use std::time::Instant;

use crate::common::*;
use futures_util::StreamExt;

const TOKENS: &str =
    r#"[{"name": "bob", "token": "tok-bob-Secret2"}, {"name": "h", "token": "hard-Tok-1"}]"#;

#[tokio::test]
#[ignore = "slow: scripts/test runs it with --ignored"]
async fn large_bodies_stream_without_growing_memory() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(TOKENS).start();
    let c = client();
    // Warm up so the baseline includes the connection pools and buffers.
    c.get(gw.url("/v1/download?bytes=1048576&token=tok-bob-Secret2"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let baseline = gw.peak_rss_kib();

    const UP: u64 = 64 << 20;
    let chunks = futures_util::stream::iter((0..UP / (1 << 16)).map(|i| {
        let chunk: Vec<u8> = (i * 65536..(i + 1) * 65536).map(pattern_byte).collect();
        Ok::<_, std::io::Error>(chunk)
    }));
    let r = c
        .post(gw.url("/v1/upload?token=tok-bob-Secret2"))
        .header("content-length", UP.to_string())
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = r.json().await.unwrap();
    let mut hasher = sha2::Sha256::default();
    for i in 0..UP / (1 << 16) {
        let chunk: Vec<u8> = (i * 65536..(i + 1) * 65536).map(pattern_byte).collect();
        sha2::Digest::update(&mut hasher, &chunk);
    }
    let want = hex(&sha2::Digest::finalize(hasher));
    assert_eq!(answer["len"], UP);
    assert_eq!(answer["sha256"], want);
    assert_eq!(up.last().body_sha256, want);

    const DOWN: u64 = 100 << 20;
    let r = c
        .get(gw.url(&format!("/v1/download?bytes={DOWN}&token=tok-bob-Secret2")))
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    let mut at = 0u64;
    let mut intact = true;
    while let Some(chunk) = stream.next().await {
        for b in chunk.unwrap().iter() {
            intact &= *b == pattern_byte(at);
            at += 1;
        }
    }
    assert_eq!(at, DOWN);
    assert!(intact, "downloaded bytes differ");
    let growth_mib = (gw.peak_rss_kib().saturating_sub(baseline)) as f64 / 1024.0;
    eprintln!(
        "peak RSS growth over 64 MB up + 100 MB down: {growth_mib:.1} MiB (baseline {} KiB)",
        baseline
    );
    assert!(growth_mib < 48.0, "peak RSS grew by {growth_mib:.1} MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: scripts/test runs it with --ignored"]
async fn load_20000_requests_at_200_connections_mixing_json_and_sse() {
    let up = MockUpstream::start().await;
    let gw = Launch::new(&up.url()).tokens(TOKENS).start();
    let idle_kib = gw.rss_kib();
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(200)
        .build()
        .unwrap();
    let started = Instant::now();
    let workers: Vec<_> = (0..200)
        .map(|w| {
            let client = client.clone();
            let base = gw.url("");
            tokio::spawn(async move {
                let mut errors = 0u32;
                for i in 0..100 {
                    let sse = (w + i) % 4 == 0;
                    let url = if sse {
                        format!("{base}/v1/sse?n=3&gap_ms=1&token=hard-Tok-1")
                    } else {
                        format!("{base}/v1/models?token=hard-Tok-1")
                    };
                    match client.get(url).send().await {
                        Ok(r) if r.status() == 200 => match r.bytes().await {
                            Ok(b) if !sse || b.ends_with(b"data: [DONE]\n\n") => {}
                            _ => errors += 1,
                        },
                        _ => errors += 1,
                    }
                }
                errors
            })
        })
        .collect();
    let mut errors = 0;
    for w in workers {
        errors += w.await.unwrap();
    }
    let took = started.elapsed();
    let peak_kib = gw.peak_rss_kib();
    eprintln!(
        "load: 20000 requests, 200 connections, {errors} errors, {took:?}, idle RSS {} MiB, peak RSS {} MiB",
        idle_kib / 1024,
        peak_kib / 1024
    );
    assert_eq!(errors, 0);
    assert_eq!(up.count(), 20_000);
    // Bounded: well under what buffering 20,000 responses would take.
    assert!(peak_kib < 200 * 1024, "peak RSS {peak_kib} KiB");
}
