//! A checkpoint object: one workload's snapshot stream (the same manifest, checksummed chunks and
//! trailer a migration sends), sealed with the cluster key so that whoever keeps it — a replica
//! agent, an object store — can neither read nor alter it unnoticed.
//!
//! ```text
//! header  "FERRYCK1" | key id (8 bytes: blake3 of the key, truncated) | nonce prefix (4 random bytes)
//! frame*  length (u32, big endian) | AES-256-GCM ciphertext of one SnapshotPart (protobuf) | tag (16)
//! ```
//!
//! Frame `i`'s nonce is the prefix followed by `i` (u64, big endian), so frames cannot be
//! reordered, dropped or repeated; its additional data is the header and one byte that is 1 only
//! on the last frame (the trailer), so an object cut after any frame is refused too. A reader
//! checks the key id first: an object sealed with another cluster key is named as such rather
//! than reported as corrupt. The object's blake3 digest (of every byte) travels beside it, so a
//! holder verifies a copy without the key.

use std::io::{Read, Write};

use ferry_proto::agent as pb;
use prost::Message;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

const MAGIC: &[u8; 8] = b"FERRYCK1";
const HEADER: usize = 20;
const TAG: usize = 16;
/// The largest frame a reader accepts (a chunk holds at most about 1 MiB): checked before
/// anything is allocated.
pub const MAX_FRAME: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a checkpoint object (it does not start with FERRYCK1)")]
    NotAnObject,
    #[error(
        "the checkpoint object was sealed with another cluster key (key id {found}; this node's is \
         {ours}): give every agent the same --cluster-key-file"
    )]
    OtherKey { found: String, ours: String },
    #[error(
        "frame {index} (at byte {offset}) of the checkpoint object failed authentication: the \
         object is corrupted or was altered"
    )]
    Corrupt { index: u64, offset: u64 },
    #[error("frame {index} (at byte {offset}) declares {len} bytes, more than the {MAX_FRAME} a frame may hold: the object is corrupted")]
    FrameTooLarge { index: u64, offset: u64, len: usize },
    #[error("the checkpoint object ends after frame {frames} (byte {offset}) without its trailer: it was cut short")]
    Truncated { frames: u64, offset: u64 },
    #[error("frame {index} of the checkpoint object is not a snapshot part: {why}")]
    Undecodable { index: u64, why: String },
}

/// The cluster key that seals checkpoint objects: 32 bytes, kept as 64 hex digits in a file of
/// mode 0600 (`ferry certs` writes one as `cluster.key`).
pub struct ClusterKey {
    key: LessSafeKey,
    id: [u8; 8],
}

impl std::fmt::Debug for ClusterKey {
    /// Its id only: the key itself never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey({})", self.id_hex())
    }
}

impl ClusterKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> ClusterKey {
        let hash = blake3::hash(bytes);
        let mut id = [0u8; 8];
        id.copy_from_slice(&hash.as_bytes()[..8]);
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte key"));
        ClusterKey { key, id }
    }

    /// Reads a key file: 64 hex digits, surrounding white space ignored.
    pub fn load(path: &std::path::Path) -> Result<ClusterKey, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the cluster key {}: {e}", path.display()))?;
        ClusterKey::parse(text.trim())
            .map_err(|why| format!("cluster key {}: {why}", path.display()))
    }

    pub fn parse(hex: &str) -> Result<ClusterKey, String> {
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "must be 64 hex digits (32 bytes), found {} characters; `ferry certs` writes one",
                hex.len()
            ));
        }
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex");
        }
        Ok(ClusterKey::from_bytes(&bytes))
    }

    /// A new random key, as the 64 hex digits of a key file.
    pub fn generate_hex() -> String {
        ferry_proto::ids::hex(&ferry_proto::ids::random_bytes::<32>())
    }

    /// The key's id (not secret: it names the key in errors and objects).
    pub fn id_hex(&self) -> String {
        ferry_proto::ids::hex(&self.id)
    }
}

fn nonce(prefix: &[u8; 4], index: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(prefix);
    n[4..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn aad(header: &[u8; HEADER], last: bool) -> [u8; HEADER + 1] {
    let mut a = [0u8; HEADER + 1];
    a[..HEADER].copy_from_slice(header);
    a[HEADER] = last as u8;
    a
}

/// Writes an object: the header, then one sealed frame per part; hashes every byte written.
pub struct Writer<'k, W: Write> {
    out: W,
    key: &'k ClusterKey,
    header: [u8; HEADER],
    index: u64,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl<'k, W: Write> Writer<'k, W> {
    pub fn new(mut out: W, key: &'k ClusterKey) -> std::io::Result<Writer<'k, W>> {
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&key.id);
        header[16..].copy_from_slice(&ferry_proto::ids::random_bytes::<4>());
        out.write_all(&header)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&header);
        Ok(Writer { out, key, header, index: 0, hasher, bytes: HEADER as u64 })
    }

    /// Seals and writes `part`; `last` for the trailer, after which nothing may follow.
    pub fn push(&mut self, part: &pb::SnapshotPart, last: bool) -> std::io::Result<()> {
        let mut buf = part.encode_to_vec();
        let prefix: [u8; 4] = self.header[16..].try_into().expect("4 bytes");
        self.key
            .key
            .seal_in_place_append_tag(
                nonce(&prefix, self.index),
                Aad::from(aad(&self.header, last)),
                &mut buf,
            )
            .map_err(|_| std::io::Error::other("sealing a checkpoint frame failed"))?;
        let len = (buf.len() as u32).to_be_bytes();
        self.out.write_all(&len)?;
        self.out.write_all(&buf)?;
        self.hasher.update(&len);
        self.hasher.update(&buf);
        self.bytes += 4 + buf.len() as u64;
        self.index += 1;
        Ok(())
    }

    /// Flushes; returns the object's blake3 digest (hex) and size.
    pub fn finish(mut self) -> std::io::Result<(String, u64, W)> {
        self.out.flush()?;
        Ok((self.hasher.finalize().to_hex().to_string(), self.bytes, self.out))
    }
}

/// Reads an object back, part by part, each authenticated before it is decoded.
pub struct Reader<'k, R: Read> {
    inp: R,
    key: &'k ClusterKey,
    header: [u8; HEADER],
    index: u64,
    offset: u64,
    done: bool,
}

impl<'k, R: Read> Reader<'k, R> {
    pub fn open(mut inp: R, key: &'k ClusterKey) -> Result<Reader<'k, R>, ObjectError> {
        let mut header = [0u8; HEADER];
        inp.read_exact(&mut header).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ObjectError::NotAnObject,
            _ => ObjectError::Io(e),
        })?;
        if &header[..8] != MAGIC {
            return Err(ObjectError::NotAnObject);
        }
        if header[8..16] != key.id {
            return Err(ObjectError::OtherKey {
                found: ferry_proto::ids::hex(&header[8..16]),
                ours: key.id_hex(),
            });
        }
        Ok(Reader { inp, key, header, index: 0, offset: HEADER as u64, done: false })
    }

    /// The next part; None after the trailer (and an error if anything follows it).
    pub fn next_part(&mut self) -> Result<Option<pb::SnapshotPart>, ObjectError> {
        let (index, offset) = (self.index, self.offset);
        let mut len = [0u8; 4];
        match read_full(&mut self.inp, &mut len)? {
            0 if self.done => return Ok(None),
            0..=3 => return Err(ObjectError::Truncated { frames: index, offset }),
            _ if self.done => return Err(ObjectError::Corrupt { index, offset }),
            _ => {}
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(ObjectError::FrameTooLarge { index, offset, len });
        }
        if len < TAG {
            return Err(ObjectError::Corrupt { index, offset });
        }
        let mut buf = vec![0u8; len];
        if read_full(&mut self.inp, &mut buf)? < len {
            return Err(ObjectError::Truncated { frames: index, offset });
        }
        self.offset += 4 + len as u64;
        self.index += 1;
        let prefix: [u8; 4] = self.header[16..].try_into().expect("4 bytes");
        // The trailer is the one frame sealed as last; try the common case first.
        let plain = {
            let mut copy = buf.clone();
            match self.key.key.open_in_place(
                nonce(&prefix, index),
                Aad::from(aad(&self.header, false)),
                &mut copy,
            ) {
                Ok(p) => Some(p.to_vec()),
                Err(_) => None,
            }
        };
        let plain = match plain {
            Some(p) => p,
            None => {
                let p = self
                    .key
                    .key
                    .open_in_place(
                        nonce(&prefix, index),
                        Aad::from(aad(&self.header, true)),
                        &mut buf,
                    )
                    .map_err(|_| ObjectError::Corrupt { index, offset })?;
                self.done = true;
                p.to_vec()
            }
        };
        let part = pb::SnapshotPart::decode(plain.as_slice())
            .map_err(|e| ObjectError::Undecodable { index, why: e.to_string() })?;
        Ok(Some(part))
    }
}

/// Reads until `buf` is full or the input ends; how many bytes were read.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The blake3 digest (hex) of a file, read in 1 MiB blocks.
pub fn digest_file(path: &std::path::Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize().to_hex().to_string());
        }
        h.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> Vec<pb::SnapshotPart> {
        let m = pb::Manifest { migration_id: "c-1".into(), ..Default::default() };
        let c = pb::Chunk { file_index: 0, payload: vec![7u8; 5000].into(), ..Default::default() };
        let t = pb::Trailer::default();
        vec![
            pb::SnapshotPart { part: Some(pb::snapshot_part::Part::Manifest(m)) },
            pb::SnapshotPart { part: Some(pb::snapshot_part::Part::Chunk(c)) },
            pb::SnapshotPart { part: Some(pb::snapshot_part::Part::Trailer(t)) },
        ]
    }

    fn sealed(key: &ClusterKey) -> (Vec<u8>, String) {
        let mut w = Writer::new(Vec::new(), key).unwrap();
        let ps = parts();
        for (i, p) in ps.iter().enumerate() {
            w.push(p, i + 1 == ps.len()).unwrap();
        }
        let (digest, bytes, out) = w.finish().unwrap();
        assert_eq!(bytes as usize, out.len());
        (out, digest)
    }

    fn read_all(obj: &[u8], key: &ClusterKey) -> Result<Vec<pb::SnapshotPart>, ObjectError> {
        let mut r = Reader::open(obj, key)?;
        let mut out = Vec::new();
        while let Some(p) = r.next_part()? {
            out.push(p);
        }
        Ok(out)
    }

    #[test]
    fn an_object_reads_back_as_written_and_its_digest_is_of_its_bytes() {
        let key = ClusterKey::parse(&ClusterKey::generate_hex()).unwrap();
        let (obj, digest) = sealed(&key);
        assert_eq!(read_all(&obj, &key).unwrap(), parts());
        assert_eq!(blake3::hash(&obj).to_hex().to_string(), digest);
        assert!(!obj.windows(5000).any(|w| w.iter().all(|&b| b == 7)), "the payload is sealed");
    }

    #[test]
    fn flipped_bits_cut_objects_and_other_keys_are_refused_with_reasons() {
        let key = ClusterKey::parse(&ClusterKey::generate_hex()).unwrap();
        let (obj, _) = sealed(&key);
        // Every byte after the header, flipped in turn, is caught.
        for at in (HEADER..obj.len()).step_by(97) {
            let mut bad = obj.clone();
            bad[at] ^= 0x40;
            let e = read_all(&bad, &key).expect_err("a flipped byte must be refused");
            assert!(
                matches!(
                    e,
                    ObjectError::Corrupt { .. }
                        | ObjectError::FrameTooLarge { .. }
                        | ObjectError::Truncated { .. }
                ),
                "byte {at}: {e}"
            );
        }
        let e = read_all(&obj[..obj.len() - 30], &key).unwrap_err();
        assert!(e.to_string().contains("cut short"), "{e}");
        // Cut exactly after a frame boundary (the trailer frame dropped whole).
        let first =
            HEADER + 4 + u32::from_be_bytes(obj[HEADER..HEADER + 4].try_into().unwrap()) as usize;
        let e = read_all(&obj[..first], &key).unwrap_err();
        assert!(e.to_string().contains("without its trailer"), "{e}");
        let other = ClusterKey::parse(&ClusterKey::generate_hex()).unwrap();
        let e = read_all(&obj, &other).unwrap_err();
        assert!(e.to_string().contains("another cluster key"), "{e}");
        let e = read_all(b"not an object at all", &key).unwrap_err();
        assert!(e.to_string().contains("not a checkpoint object"), "{e}");
        let mut extra = obj.clone();
        extra.extend_from_slice(&obj[HEADER..first]);
        assert!(read_all(&extra, &key).is_err(), "nothing may follow the trailer");
    }

    #[test]
    fn key_files_must_be_64_hex_digits() {
        assert!(ClusterKey::parse("abc").unwrap_err().contains("64 hex digits"));
        assert!(ClusterKey::parse(&"g".repeat(64)).is_err());
        let k = ClusterKey::generate_hex();
        assert_eq!(k.len(), 64);
        assert_eq!(
            ClusterKey::parse(&k).unwrap().id_hex(),
            ClusterKey::parse(&k).unwrap().id_hex()
        );
    }
}
