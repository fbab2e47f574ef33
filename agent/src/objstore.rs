//! Checkpoint objects in an S3-compatible object store (AWS S3, Garage, MinIO, ...).
//!
//! A checkpoint kept only on the node that took it dies with that node; an object store keeps it
//! where any node can fetch it. This module moves whole files in and out of one bucket under a
//! key prefix, streaming both ways so that a multi-GiB checkpoint never sits in memory.
//!
//! Where the store is comes as a URL, `s3://BUCKET/PREFIX?endpoint=URL&region=REGION`, and the
//! credentials from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (or the URL's `access_key_id=`
//! and `secret_access_key_file=`): never the secret itself in the URL, which ends up in logs,
//! shell histories and process listings.
//!
//! Every error names the endpoint, the bucket and the key, and says in words what went wrong
//! (not found, credentials refused, endpoint unreachable), since the person reading it is
//! usually looking at a failed migration, not at S3.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
    WriteMultipart,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

/// How a store URL is written (for error messages).
const URL_FORM: &str =
    "s3://BUCKET[/PREFIX]?endpoint=URL[&region=REGION][&access_key_id=ID][&secret_access_key_file=FILE]";

/// The region when the URL names none: AWS's default, which MinIO and most others accept too.
const DEFAULT_REGION: &str = "us-east-1";

/// Size of each part of a multipart upload, and the size up to which a file goes up in a
/// single PUT. S3 wants parts of at least 5 MiB (but the last) and at most 10 000 of them, so
/// objects up to ~78 GiB; 8 MiB parts keep the number of requests for a 1 GiB file at 128.
const PART_SIZE: usize = 8 << 20;

/// Parts uploading at once. With the part being filled and the read buffer, an upload holds at
/// most about `(PARTS_IN_FLIGHT + 1) * PART_SIZE + READ_SIZE` bytes (~41 MiB), whatever the
/// file's size.
const PARTS_IN_FLIGHT: usize = 4;

/// Bytes read from the file at a time.
const READ_SIZE: usize = 1 << 20;

/// Where the store is and who we are to it.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The S3 API's base URL, e.g. `http://127.0.0.1:3900` (requests are path-style:
    /// `ENDPOINT/BUCKET/KEY`, so no DNS name per bucket is needed).
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Prefix of every key this store touches, without leading or trailing `/`; may be empty.
    pub prefix: String,
}

/// Never prints the secret: configs end up in logs.
impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl S3Config {
    /// Parses `s3://BUCKET/PREFIX?endpoint=http://127.0.0.1:3900&region=garage`.
    ///
    /// The access key id comes from `access_key_id=` or else `AWS_ACCESS_KEY_ID`; the secret
    /// from the file named by `secret_access_key_file=` or else `AWS_SECRET_ACCESS_KEY`. The
    /// region defaults to `us-east-1`. Query values may be percent-encoded.
    pub fn from_url(url: &str) -> Result<S3Config, String> {
        S3Config::from_url_with_env(url, &|name| {
            std::env::var(name).ok().filter(|v| !v.trim().is_empty())
        })
    }

    /// [`S3Config::from_url`] with the environment given as a function (tests must not
    /// change the process environment other threads read).
    fn from_url_with_env(
        url: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<S3Config, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{url:?} is not an s3:// URL; expected {URL_FORM}"))?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        if bucket.is_empty() {
            return Err(format!("no bucket in {url:?}; expected {URL_FORM}"));
        }
        check_bucket_name(bucket).map_err(|why| format!("bucket {bucket:?} in {url:?}: {why}"))?;
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            ObjPath::parse(prefix)
                .map_err(|e| format!("key prefix {prefix:?} in {url:?} is not a valid key: {e}"))?;
        }

        let (mut endpoint, mut region, mut key_id, mut secret_file) = (None, None, None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, raw) = pair.split_once('=').ok_or_else(|| {
                format!("parameter {pair:?} in {url:?} has no value (NAME=VALUE)")
            })?;
            let slot = match name {
                "endpoint" => &mut endpoint,
                "region" => &mut region,
                "access_key_id" => &mut key_id,
                "secret_access_key_file" => &mut secret_file,
                // Not echoing the URL: it holds a secret.
                "secret_access_key" | "secret" | "secret_key" => {
                    return Err("the S3 URL carries a secret key; URLs end up in logs and process \
                                listings: put the secret in a file and pass \
                                secret_access_key_file=FILE, or set AWS_SECRET_ACCESS_KEY"
                        .into())
                }
                _ => {
                    return Err(format!(
                        "unknown parameter {name:?} in {url:?}; known: endpoint, region, \
                         access_key_id, secret_access_key_file"
                    ))
                }
            };
            if slot.is_some() {
                return Err(format!("parameter {name:?} is given twice in {url:?}"));
            }
            let value = percent_decode(raw)
                .map_err(|why| format!("parameter {name:?} in {url:?}: {why}"))?;
            if value.is_empty() {
                return Err(format!("parameter {name:?} in {url:?} is empty"));
            }
            *slot = Some(value);
        }

        let endpoint = endpoint.ok_or_else(|| {
            format!(
                "no endpoint in {url:?}: add ?endpoint=http://HOST:PORT, the S3 API's address \
                 (for AWS, https://s3.REGION.amazonaws.com)"
            )
        })?;
        let endpoint = endpoint.trim_end_matches('/').to_string();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(format!(
                "endpoint {endpoint:?} in {url:?} must start with http:// or https://"
            ));
        }
        let access_key_id = key_id.or_else(|| env("AWS_ACCESS_KEY_ID")).ok_or_else(|| {
            "no S3 access key id: set AWS_ACCESS_KEY_ID, or add access_key_id=ID to the s3:// URL"
                .to_string()
        })?;
        let secret_access_key = match secret_file {
            Some(file) => {
                let text = std::fs::read_to_string(&file).map_err(|e| {
                    format!(
                        "cannot read the S3 secret key from secret_access_key_file {file:?}: {e}"
                    )
                })?;
                let secret = text.trim().to_string();
                if secret.is_empty() {
                    return Err(format!("secret_access_key_file {file:?} is empty"));
                }
                secret
            }
            None => env("AWS_SECRET_ACCESS_KEY").ok_or_else(|| {
                "no S3 secret access key: set AWS_SECRET_ACCESS_KEY, or add \
                 secret_access_key_file=FILE (a file holding the secret) to the s3:// URL"
                    .to_string()
            })?,
        };
        Ok(S3Config {
            endpoint,
            region: region.unwrap_or_else(|| DEFAULT_REGION.to_string()),
            bucket: bucket.to_string(),
            access_key_id,
            secret_access_key,
            prefix: prefix.to_string(),
        })
    }
}

/// S3's bucket naming rules (the ones a typo breaks): 3 to 63 lowercase letters, digits, dots
/// and hyphens, starting and ending with a letter or digit.
fn check_bucket_name(bucket: &str) -> Result<(), &'static str> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-';
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if (3..=63).contains(&bucket.len())
        && bucket.chars().all(ok_char)
        && ends_ok(bucket.chars().next())
        && ends_ok(bucket.chars().last())
    {
        Ok(())
    } else {
        Err("S3 bucket names are 3 to 63 lowercase letters, digits, dots and hyphens, \
             starting and ending with a letter or digit")
    }
}

/// Decodes `%XX` escapes (a file path with spaces, an endpoint with a `&`).
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
            let hex = hex.ok_or_else(|| format!("bad percent escape at byte {i} of {s:?}"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|e| e.to_string())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8"))
}

/// What went wrong, with the facts to act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid S3 configuration for {endpoint}: {reason}")]
    Config { endpoint: String, reason: String },
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("object {key} not found in bucket {bucket} at {endpoint}")]
    NotFound { endpoint: String, bucket: String, key: String },
    #[error(
        "bucket {bucket} does not exist at {endpoint}: create it, or fix the bucket in the \
         s3:// URL"
    )]
    NoBucket { endpoint: String, bucket: String },
    #[error(
        "S3 at {endpoint} refused the credentials (access key {access_key_id}) for bucket \
         {bucket}: {detail}; check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or the URL's \
         access_key_id/secret_access_key_file) and that the key may read and write the bucket"
    )]
    Denied { endpoint: String, bucket: String, access_key_id: String, detail: String },
    #[error("cannot reach S3 endpoint {endpoint}: {cause}")]
    Unreachable { endpoint: String, cause: String },
    #[error("object {key} in bucket {bucket} at {endpoint} ended after {got} of its {size} bytes")]
    Truncated { endpoint: String, bucket: String, key: String, got: u64, size: u64 },
    #[error("S3 {op} of {key} in bucket {bucket} at {endpoint} failed: {cause}")]
    Request { op: &'static str, endpoint: String, bucket: String, key: String, cause: String },
    #[error("cannot {op} local file {}: {source}", path.display())]
    Local { op: &'static str, path: PathBuf, source: std::io::Error },
}

/// One bucket (under a key prefix) of an S3-compatible store.
pub struct S3Store {
    store: AmazonS3,
    endpoint: String,
    bucket: String,
    access_key_id: String,
    /// `None` for an empty prefix.
    prefix: Option<ObjPath>,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("access_key_id", &self.access_key_id)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// A store for `cfg`. Makes no request (see [`S3Store::check`]). `http://` endpoints are
    /// allowed (a store on the local network or loopback), and requests are path-style.
    pub fn new(cfg: &S3Config) -> Result<S3Store, StoreError> {
        let endpoint = cfg.endpoint.trim_end_matches('/').to_string();
        let config_err = |reason: String| StoreError::Config { endpoint: endpoint.clone(), reason };
        let allow_http = endpoint.starts_with("http://");
        if !allow_http && !endpoint.starts_with("https://") {
            return Err(config_err("the endpoint must start with http:// or https://".into()));
        }
        check_bucket_name(&cfg.bucket)
            .map_err(|why| config_err(format!("bucket {:?}: {why}", cfg.bucket)))?;
        let prefix = cfg.prefix.trim_matches('/');
        let prefix = if prefix.is_empty() {
            None
        } else {
            Some(
                ObjPath::parse(prefix)
                    .map_err(|e| config_err(format!("key prefix {prefix:?}: {e}")))?,
            )
        };
        ensure_crypto_provider();
        let options = ClientOptions::new()
            .with_allow_http(allow_http)
            .with_connect_timeout(Duration::from_secs(5))
            // A whole request, body included: one part at a slow 100 KiB/s still fits.
            .with_timeout(Duration::from_secs(120));
        // Retries cover a blip, not an outage: a store that is down must fail an operation in
        // seconds (with the cause), not after the library's default of 3 minutes.
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
        };
        let store = AmazonS3Builder::new()
            .with_endpoint(&endpoint)
            .with_region(&cfg.region)
            .with_bucket_name(&cfg.bucket)
            .with_access_key_id(&cfg.access_key_id)
            .with_secret_access_key(&cfg.secret_access_key)
            .with_virtual_hosted_style_request(false)
            .with_client_options(options)
            .with_retry(retry)
            .build()
            .map_err(|e| config_err(error_chain(&e)))?;
        Ok(S3Store {
            store,
            endpoint,
            bucket: cfg.bucket.clone(),
            access_key_id: cfg.access_key_id.clone(),
            prefix,
        })
    }

    /// The store's endpoint URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The store's bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Uploads the file at `path` as `key` and returns its size. Files up to 8 MiB go up in one
    /// PUT; larger ones in a multipart upload of 8 MiB parts, a few at once, read from the
    /// file as they go (memory stays bounded whatever the size). A failed multipart upload is
    /// aborted so that its parts do not linger in the bucket.
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<u64, StoreError> {
        let loc = self.location(key)?;
        let mut file = tokio::fs::File::open(path).await.map_err(|e| local("open", path, e))?;
        // The first part decides: a file that ends within it is one PUT.
        let mut first = Vec::with_capacity(READ_SIZE);
        while first.len() < PART_SIZE {
            let want = (PART_SIZE - first.len()).min(READ_SIZE);
            let n = (&mut file)
                .take(want as u64)
                .read_to_end(&mut first)
                .await
                .map_err(|e| local("read", path, e))?;
            if n == 0 {
                break;
            }
        }
        if first.len() < PART_SIZE {
            let len = first.len() as u64;
            self.store
                .put(&loc, PutPayload::from(first))
                .await
                .map_err(|e| self.failed("upload", &loc, e))?;
            return Ok(len);
        }

        let upload =
            self.store.put_multipart(&loc).await.map_err(|e| self.failed("upload", &loc, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut total = first.len() as u64;
        writer.write(&first);
        drop(first);
        let mut buf = vec![0u8; READ_SIZE];
        let streamed: Result<(), StoreError> = async {
            loop {
                let n = file.read(&mut buf).await.map_err(|e| local("read", path, e))?;
                if n == 0 {
                    return Ok(());
                }
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| self.failed("upload", &loc, e))?;
                writer.write(&buf[..n]);
                total += n as u64;
            }
        }
        .await;
        if let Err(e) = streamed {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(
                    key = %loc,
                    error = %error_chain(&abort),
                    "could not abort a failed multipart upload; its parts stay in the bucket \
                     until a lifecycle rule removes them"
                );
            }
            return Err(e);
        }
        // `finish` aborts the upload itself when it fails.
        writer.finish().await.map_err(|e| self.failed("upload", &loc, e))?;
        Ok(total)
    }

    /// Downloads `key` into the file at `path` (created or replaced) and returns its size. The
    /// bytes stream into `PATH.part`, renamed to `path` once complete: a failed download never
    /// leaves a truncated file under the real name.
    pub async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64, StoreError> {
        let loc = self.location(key)?;
        let got = self.store.get(&loc).await.map_err(|e| self.failed("download", &loc, e))?;
        let size = got.meta.size;
        let mut part = path.as_os_str().to_owned();
        part.push(".part");
        let part = PathBuf::from(part);
        let mut file =
            tokio::fs::File::create(&part).await.map_err(|e| local("create", &part, e))?;
        let written: Result<u64, StoreError> = async {
            let mut stream = got.into_stream();
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.failed("download", &loc, e))?;
                file.write_all(&chunk).await.map_err(|e| local("write", &part, e))?;
                n += chunk.len() as u64;
            }
            // tokio's File finishes writes in the background; they must be done before the
            // rename (and their errors seen).
            file.flush().await.map_err(|e| local("write", &part, e))?;
            if n != size {
                return Err(StoreError::Truncated {
                    endpoint: self.endpoint.clone(),
                    bucket: self.bucket.clone(),
                    key: loc.to_string(),
                    got: n,
                    size,
                });
            }
            tokio::fs::rename(&part, path)
                .await
                .map_err(|e| local("rename into place", path, e))?;
            Ok(n)
        }
        .await;
        if written.is_err() {
            drop(file);
            let _ = tokio::fs::remove_file(&part).await;
        }
        written
    }

    /// The objects under `prefix` (relative to the store's prefix; whole key segments, so
    /// `ck/w-1` lists `ck/w-1/...` but not `ck/w-10/...`; empty for all), as keys relative to
    /// the store's prefix with their sizes, sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let full = if prefix.trim_matches('/').is_empty() {
            self.prefix.clone()
        } else {
            Some(self.location(prefix.trim_matches('/'))?)
        };
        let shown = full.as_ref().map(|p| p.to_string()).unwrap_or_default();
        let mut stream = self.store.list(full.as_ref());
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| self.failed_at("list", &shown, e))?;
            let key = meta.location.as_ref();
            let rel = match &self.prefix {
                Some(p) => {
                    key.strip_prefix(p.as_ref()).and_then(|k| k.strip_prefix('/')).unwrap_or(key)
                }
                None => key,
            };
            out.push((rel.to_string(), meta.size));
        }
        out.sort();
        Ok(out)
    }

    /// Deletes `key`. Deleting a key that does not exist succeeds (S3's semantics: the end
    /// state is the same).
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let loc = self.location(key)?;
        self.store.delete(&loc).await.map_err(|e| self.failed("delete", &loc, e))
    }

    /// One cheap request (a list of the prefix, one page) that fails as the real work would:
    /// endpoint unreachable, credentials refused, bucket missing. For a start-up check that
    /// reports a bad configuration before a migration depends on it.
    pub async fn check(&self) -> Result<(), StoreError> {
        let shown = self.prefix.as_ref().map(|p| p.to_string()).unwrap_or_default();
        self.store
            .list_with_delimiter(self.prefix.as_ref())
            .await
            .map(|_| ())
            .map_err(|e| self.failed_at("list", &shown, e))
    }

    /// The full object path of `key` (the store's prefix, then `key`).
    fn location(&self, key: &str) -> Result<ObjPath, StoreError> {
        let invalid = |reason: String| StoreError::InvalidKey { key: key.to_string(), reason };
        if key.trim_matches('/').is_empty() {
            return Err(invalid("the key is empty".into()));
        }
        let rel = ObjPath::parse(key).map_err(|e| invalid(e.to_string()))?;
        Ok(match &self.prefix {
            Some(p) => p.parts().chain(rel.parts()).collect(),
            None => rel,
        })
    }

    fn failed(&self, op: &'static str, loc: &ObjPath, err: object_store::Error) -> StoreError {
        self.failed_at(op, loc.as_ref(), err)
    }

    /// Turns the library's error into one that says what to do: the transport failed (the
    /// endpoint is unreachable), S3 answered "no such key", "no such bucket", or refused the
    /// credentials; anything else keeps S3's own words.
    fn failed_at(&self, op: &'static str, key: &str, err: object_store::Error) -> StoreError {
        let text = error_chain(&err);
        if let Some(cause) = transport_failure(&err) {
            return StoreError::Unreachable { endpoint: self.endpoint.clone(), cause };
        }
        if text.contains("NoSuchBucket") {
            return StoreError::NoBucket {
                endpoint: self.endpoint.clone(),
                bucket: self.bucket.clone(),
            };
        }
        let denied = matches!(
            err,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        ) || [
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
            "403 Forbidden",
            "401 Unauthorized",
        ]
        .iter()
        .any(|code| text.contains(code));
        if denied {
            return StoreError::Denied {
                endpoint: self.endpoint.clone(),
                bucket: self.bucket.clone(),
                access_key_id: self.access_key_id.clone(),
                detail: s3_error_words(&text),
            };
        }
        if let object_store::Error::NotFound { .. } = err {
            return StoreError::NotFound {
                endpoint: self.endpoint.clone(),
                bucket: self.bucket.clone(),
                key: key.to_string(),
            };
        }
        StoreError::Request {
            op,
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
            key: if key.is_empty() { "(the bucket's root)".into() } else { key.to_string() },
            cause: text,
        }
    }
}

fn local(op: &'static str, path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Local { op, path: path.to_path_buf(), source }
}

/// reqwest is built with rustls but no crypto provider of its own (the workspace's Cargo.toml
/// says why), so it takes the process's default and panics without one. Installs ring's, the
/// provider tonic's TLS already uses in this process, unless one is installed.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another thread installing one is fine: any default does.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The error and its sources, each once (libraries often repeat their source in their own
/// message).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
    out
}

/// Why a request never got an answer, when that is what happened: the connection was refused,
/// timed out, or could not be made.
fn transport_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut connect = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return Some(match io.kind() {
                ConnectionRefused => {
                    "connection refused (is the S3 server running, and is the port right?)".into()
                }
                TimedOut => "connection timed out".into(),
                ConnectionReset => "connection reset by the server".into(),
                HostUnreachable | NetworkUnreachable => format!("no route to the host ({io})"),
                _ => io.to_string(),
            });
        }
        if let Some(http) = e.downcast_ref::<object_store::client::HttpError>() {
            if matches!(
                http.kind(),
                object_store::client::HttpErrorKind::Connect
                    | object_store::client::HttpErrorKind::Timeout
            ) {
                connect.get_or_insert_with(|| error_chain(e));
            }
        }
        source = e.source();
    }
    connect
}

/// S3's `<Code>` and `<Message>` from an error response's body, else the text as it is.
fn s3_error_words(text: &str) -> String {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let len = text[start..].find(&format!("</{name}>"))?;
        Some(text[start..start + len].trim().to_string())
    };
    match (tag("Code"), tag("Message")) {
        (Some(code), Some(msg)) => format!("{code}: {msg}"),
        (Some(code), None) => code,
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    const CREDS: &[(&str, &str)] =
        &[("AWS_ACCESS_KEY_ID", "GKenv"), ("AWS_SECRET_ACCESS_KEY", "envsecret")];

    fn parse(url: &str, vars: &[(&str, &str)]) -> Result<S3Config, String> {
        S3Config::from_url_with_env(url, &env_with(vars))
    }

    #[test]
    fn full_url_with_credentials_from_the_environment() {
        let c = parse("s3://ferry/ck/node-a?endpoint=http://127.0.0.1:3900&region=garage", CREDS)
            .unwrap();
        assert_eq!(
            c,
            S3Config {
                endpoint: "http://127.0.0.1:3900".into(),
                region: "garage".into(),
                bucket: "ferry".into(),
                access_key_id: "GKenv".into(),
                secret_access_key: "envsecret".into(),
                prefix: "ck/node-a".into(),
            }
        );
    }

    #[test]
    fn prefix_and_region_are_optional_and_slashes_trimmed() {
        let c = parse("s3://ferry?endpoint=https://s3.example.com/", CREDS).unwrap();
        assert_eq!((c.prefix.as_str(), c.region.as_str()), ("", DEFAULT_REGION));
        assert_eq!(c.endpoint, "https://s3.example.com");
        let c = parse("s3://ferry//ck/?endpoint=http://h:1", CREDS).unwrap();
        assert_eq!(c.prefix, "ck");
        let c = parse("s3://ferry/?endpoint=http://h:1", CREDS).unwrap();
        assert_eq!(c.prefix, "");
    }

    #[test]
    fn url_parameters_win_over_the_environment_and_the_secret_comes_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret key");
        std::fs::write(&file, "filesecret\n").unwrap();
        let url = format!(
            "s3://ferry/ck?endpoint=http%3A%2F%2F127.0.0.1%3A3900&access_key_id=GKurl&secret_access_key_file={}",
            file.to_str().unwrap().replace(' ', "%20")
        );
        let c = parse(&url, CREDS).unwrap();
        assert_eq!(c.endpoint, "http://127.0.0.1:3900");
        assert_eq!(c.access_key_id, "GKurl");
        assert_eq!(c.secret_access_key, "filesecret");
        // The secret never shows in Debug output.
        assert!(!format!("{c:?}").contains("filesecret"));
    }

    #[test]
    fn missing_pieces_are_named_with_how_to_give_them() {
        let e = parse("s3://ferry/ck", CREDS).unwrap_err();
        assert!(e.contains("no endpoint") && e.contains("endpoint=http://HOST:PORT"), "{e}");
        let e = parse("s3://ferry?endpoint=http://h:1", &[]).unwrap_err();
        assert!(e.contains("AWS_ACCESS_KEY_ID") && e.contains("access_key_id=ID"), "{e}");
        let e =
            parse("s3://ferry?endpoint=http://h:1", &[("AWS_ACCESS_KEY_ID", "GK1")]).unwrap_err();
        assert!(
            e.contains("AWS_SECRET_ACCESS_KEY") && e.contains("secret_access_key_file="),
            "{e}"
        );
        let e = parse("s3://?endpoint=http://h:1", CREDS).unwrap_err();
        assert!(e.contains("no bucket"), "{e}");
        let e = parse(
            "s3://ferry?endpoint=http://h:1&secret_access_key_file=/nonexistent/ferry-secret",
            CREDS,
        )
        .unwrap_err();
        assert!(e.contains("/nonexistent/ferry-secret") && e.contains("cannot read"), "{e}");
    }

    #[test]
    fn a_secret_in_the_url_is_refused_without_echoing_it() {
        let e =
            parse("s3://ferry?endpoint=http://h:1&secret_access_key=hunter2", CREDS).unwrap_err();
        assert!(e.contains("secret_access_key_file=FILE"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn malformed_urls_are_refused() {
        for (url, words) in [
            ("http://ferry?endpoint=http://h:1", "not an s3:// URL"),
            ("s3://Ferry_Bucket?endpoint=http://h:1", "bucket names"),
            ("s3://ferry?endpoint=ftp://h:1", "must start with http:// or https://"),
            ("s3://ferry?endpoint=http://h:1&endpoint=http://h:2", "given twice"),
            ("s3://ferry?endpoint=http://h:1&regoin=x", "unknown parameter \"regoin\""),
            ("s3://ferry?endpoint", "has no value"),
            ("s3://ferry?endpoint=http://h:1&region=", "is empty"),
            ("s3://ferry?endpoint=http%3g//h", "bad percent escape"),
            ("s3://ferry/a/../b?endpoint=http://h:1", "not a valid key"),
        ] {
            let e = parse(url, CREDS).unwrap_err();
            assert!(e.contains(words), "{url}: {e}");
        }
    }

    fn store(prefix: &str) -> S3Store {
        S3Store::new(&S3Config {
            endpoint: "http://127.0.0.1:9".into(),
            region: "garage".into(),
            bucket: "ferry".into(),
            access_key_id: "GK1".into(),
            secret_access_key: "s".into(),
            prefix: prefix.into(),
        })
        .unwrap()
    }

    #[test]
    fn keys_go_under_the_prefix_and_bad_keys_are_refused() {
        assert_eq!(store("ck").location("w-1/3").unwrap().as_ref(), "ck/w-1/3");
        assert_eq!(store("").location("w-1/3").unwrap().as_ref(), "w-1/3");
        assert_eq!(store("a/b/").location("c").unwrap().as_ref(), "a/b/c");
        for bad in ["", "/", "a//b", "a/../b"] {
            let e = store("ck").location(bad).unwrap_err();
            assert!(matches!(e, StoreError::InvalidKey { .. }), "{bad:?}: {e}");
        }
    }

    #[test]
    fn bad_endpoints_are_configuration_errors() {
        let mut cfg = S3Config {
            endpoint: "s3.example.com".into(),
            region: "r".into(),
            bucket: "ferry".into(),
            access_key_id: "GK1".into(),
            secret_access_key: "s".into(),
            prefix: String::new(),
        };
        let e = S3Store::new(&cfg).unwrap_err().to_string();
        assert!(e.contains("s3.example.com") && e.contains("http:// or https://"), "{e}");
        cfg.endpoint = "https://s3.example.com".into();
        S3Store::new(&cfg).unwrap();
    }

    #[test]
    fn s3_error_bodies_are_boiled_down_to_code_and_message() {
        let text = "Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?>\
                    <Error><Code>AccessDenied</Code><Message>Forbidden: No such key: GK1</Message></Error>";
        assert_eq!(s3_error_words(text), "AccessDenied: Forbidden: No such key: GK1");
        assert_eq!(s3_error_words("plain"), "plain");
    }
}
