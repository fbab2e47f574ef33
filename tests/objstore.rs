//! The S3 object store backend (ferry_agent::objstore) against a real S3 server, a single-node
//! Garage: a 24 MiB file goes up in a multipart upload and comes back byte for byte (and 96 MiB
//! do too, in bounded memory); listing and deleting; and the errors a person meets (a missing
//! key, refused credentials, a bucket that does not exist, a server that is down) say what
//! happened and what to check.

mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_agent::objstore::{S3Config, S3Store, StoreError};
use harness::garage::Garage;
use harness::TempDir;

const MIB: u64 = 1 << 20;

fn config(g: &Garage, prefix: &str) -> S3Config {
    S3Config {
        endpoint: g.endpoint.clone(),
        region: g.region.clone(),
        bucket: g.bucket.clone(),
        access_key_id: g.access_key_id.clone(),
        secret_access_key: g.secret_access_key.clone(),
        prefix: prefix.into(),
    }
}

/// A file of `len` random bytes (incompressible, like most of a checkpoint's pages).
fn random_file(path: &Path, len: u64) {
    let mut src = std::io::Read::take(std::fs::File::open("/dev/urandom").unwrap(), len);
    let mut dst = std::fs::File::create(path).unwrap();
    assert_eq!(std::io::copy(&mut src, &mut dst).unwrap(), len);
}

fn digest(path: &Path) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    std::io::copy(&mut std::fs::File::open(path).unwrap(), &mut hasher).unwrap();
    hasher.finalize()
}

/// Runs `work` while sampling this process's resident set every 2 ms; returns its result and
/// the most the resident set grew meanwhile.
async fn peak_rss_growth<T>(work: impl std::future::Future<Output = T>) -> (T, u64) {
    let me = std::process::id() as i32;
    let base = harness::rss_bytes(me);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(harness::rss_bytes(me));
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        }
    });
    let out = work.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap().max(harness::rss_bytes(me));
    (out, peak.saturating_sub(base))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_objects_round_trip_through_garage() {
    let mut garage = Garage::start().await;
    let tmp = TempDir::new("ferry-test-objstore");

    // The URL form, with the secret in a file (never in the URL).
    let secret = tmp.path().join("s3-secret");
    std::fs::write(&secret, format!("{}\n", garage.secret_access_key)).unwrap();
    let url = format!(
        "s3://{}/ck?endpoint={}&region={}&access_key_id={}&secret_access_key_file={}",
        garage.bucket,
        garage.endpoint,
        garage.region,
        garage.access_key_id,
        secret.display()
    );
    let cfg = S3Config::from_url(&url).unwrap();
    assert_eq!(cfg, config(&garage, "ck"));
    let store = S3Store::new(&cfg).unwrap();
    store.check().await.unwrap();

    // Memory stays bounded whatever the file's size: 96 MiB go up (and come back down) while
    // this process grows by far less. First, before anything else here has used big buffers.
    let big = tmp.path().join("big.img");
    random_file(&big, 96 * MIB);
    let (put, grew) = peak_rss_growth(store.put_file("big.img", &big)).await;
    assert_eq!(put.unwrap(), 96 * MIB);
    eprintln!("put 96 MiB: resident set grew by at most {} MiB", grew / MIB);
    assert!(grew < 64 * MIB, "uploading 96 MiB grew the resident set by {} MiB", grew / MIB);
    let big_back = tmp.path().join("big-back.img");
    let (got, grew) = peak_rss_growth(store.get_to_file("big.img", &big_back)).await;
    assert_eq!(got.unwrap(), 96 * MIB);
    eprintln!("got 96 MiB: resident set grew by at most {} MiB", grew / MIB);
    assert!(grew < 64 * MIB, "downloading 96 MiB grew the resident set by {} MiB", grew / MIB);
    assert!(digest(&big) == digest(&big_back), "the 96 MiB object came back different");
    store.delete("big.img").await.unwrap();
    std::fs::remove_file(&big).unwrap();
    std::fs::remove_file(&big_back).unwrap();

    // A large file: a multipart upload of 8 MiB parts; and two small ones: single PUTs.
    let pages = tmp.path().join("pages.img");
    random_file(&pages, 24 * MIB);
    let t = Instant::now();
    assert_eq!(store.put_file("w-1/3/pages.img", &pages).await.unwrap(), 24 * MIB);
    eprintln!("put 24 MiB in {:?}", t.elapsed());
    // Garage logs every request: the 24 MiB went up as three 8 MiB parts.
    let log = garage.log();
    let parts = log
        .lines()
        .filter(|l| l.contains("PUT /ferry/ck/w-1/3/pages.img?") && l.contains("partNumber="))
        .count();
    assert_eq!(parts, 3, "expected a multipart upload of 3 parts; garage's log:\n{log}");
    let inventory = tmp.path().join("inventory.img");
    random_file(&inventory, 100 * 1024);
    assert_eq!(store.put_file("w-1/3/inventory.img", &inventory).await.unwrap(), 100 * 1024);
    let empty = tmp.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    assert_eq!(store.put_file("w-10/1/core.img", &empty).await.unwrap(), 0);

    let back = tmp.path().join("back.img");
    let t = Instant::now();
    assert_eq!(store.get_to_file("w-1/3/pages.img", &back).await.unwrap(), 24 * MIB);
    eprintln!("got 24 MiB in {:?}", t.elapsed());
    assert!(digest(&pages) == digest(&back), "the 24 MiB object came back different");
    assert!(!tmp.path().join("back.img.part").exists(), "the partial download file was left");
    let back_small = tmp.path().join("back-small.img");
    assert_eq!(store.get_to_file("w-1/3/inventory.img", &back_small).await.unwrap(), 100 * 1024);
    assert!(digest(&inventory) == digest(&back_small), "the 100 KiB object came back different");

    // Keys are relative to the store's prefix; a listing's prefix is whole key segments.
    let all = store.list("").await.unwrap();
    assert_eq!(
        all,
        vec![
            ("w-1/3/inventory.img".to_string(), 100 * 1024),
            ("w-1/3/pages.img".to_string(), 24 * MIB),
            ("w-10/1/core.img".to_string(), 0),
        ]
    );
    let w1 = store.list("w-1").await.unwrap();
    assert_eq!(
        w1.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["w-1/3/inventory.img", "w-1/3/pages.img"]
    );
    let other = S3Store::new(&config(&garage, "other")).unwrap();
    assert_eq!(other.list("").await.unwrap(), vec![], "another prefix sees none of these");

    // Deleting; deleting again is not an error (S3's semantics).
    store.delete("w-1/3/pages.img").await.unwrap();
    store.delete("w-1/3/pages.img").await.unwrap();
    assert_eq!(
        store.list("w-1").await.unwrap(),
        vec![("w-1/3/inventory.img".to_string(), 100 * 1024)]
    );

    // A missing key: an error naming the object, the bucket and the endpoint; no file left.
    let missing = tmp.path().join("missing.img");
    let e = store.get_to_file("w-1/3/pages.img", &missing).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, StoreError::NotFound { .. }), "{msg}");
    assert_eq!(
        msg,
        format!("object ck/w-1/3/pages.img not found in bucket ferry at {}", garage.endpoint)
    );
    assert!(!missing.exists() && !tmp.path().join("missing.img.part").exists());

    // Refused credentials: a wrong secret, an unknown access key.
    let mut wrong = config(&garage, "ck");
    wrong.secret_access_key = "0".repeat(64);
    let bad = S3Store::new(&wrong).unwrap();
    for e in [
        bad.check().await.unwrap_err(),
        bad.put_file("w-2/1/inventory.img", &inventory).await.unwrap_err(),
        bad.get_to_file("w-1/3/inventory.img", &missing).await.unwrap_err(),
    ] {
        let msg = e.to_string();
        assert!(matches!(e, StoreError::Denied { .. }), "{msg}");
        assert!(
            msg.contains(&format!("S3 at {} refused the credentials", garage.endpoint)),
            "{msg}"
        );
        assert!(msg.contains(&garage.access_key_id), "{msg}");
        assert!(msg.contains("AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"), "{msg}");
        eprintln!("wrong secret: {msg}");
    }
    wrong.access_key_id = "GK0123456789abcdef01234567".into();
    let e = S3Store::new(&wrong).unwrap().check().await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, StoreError::Denied { .. }), "{msg}");
    assert!(msg.contains("GK0123456789abcdef01234567"), "{msg}");
    eprintln!("unknown key: {msg}");

    // A bucket that does not exist.
    let mut nobucket = config(&garage, "ck");
    nobucket.bucket = "no-such-bucket".into();
    let e = S3Store::new(&nobucket).unwrap().check().await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, StoreError::NoBucket { .. }), "{msg}");
    assert!(msg.contains("no-such-bucket") && msg.contains(&garage.endpoint), "{msg}");
    eprintln!("missing bucket: {msg}");

    // The server down: refused connections, reported as such within seconds (not after the
    // S3 library's default minutes of retries).
    garage.stop();
    let t = Instant::now();
    for e in [
        store.check().await.unwrap_err(),
        store.put_file("w-1/3/inventory.img", &inventory).await.unwrap_err(),
    ] {
        let msg = e.to_string();
        assert!(matches!(e, StoreError::Unreachable { .. }), "{msg}");
        assert!(
            msg.starts_with(&format!(
                "cannot reach S3 endpoint {}: connection refused",
                garage.endpoint
            )),
            "{msg}"
        );
        eprintln!("server down: {msg}");
    }
    assert!(t.elapsed() < Duration::from_secs(15), "took {:?} to give up", t.elapsed());
}
