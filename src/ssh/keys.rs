//! Keys in OpenSSH formats: `gridvfs keygen`, loading, fingerprints as `ssh-keygen -l`
//! prints them.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey};

use super::SshError;

fn key_err(path: &Path, why: impl ToString) -> SshError {
    SshError::KeyFile {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// Writes a new ed25519 key pair: `path` (private, OpenSSH format, mode 0600; an existing
/// file is never overwritten) and `path.pub` (one `authorized_keys` line). Returns the
/// public line.
pub fn keygen(path: &Path, comment: &str) -> Result<String, SshError> {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|e| key_err(Path::new("/dev/urandom"), e))?;
    let kp = Ed25519Keypair::from_seed(&seed);
    seed.fill(0);
    let key = PrivateKey::new(KeypairData::Ed25519(kp), comment).map_err(|e| key_err(path, e))?;
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| key_err(path, e))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| key_err(path, e))?;
    let pub_path = path.with_extension(match path.extension() {
        Some(e) => format!("{}.pub", e.to_string_lossy()),
        None => "pub".into(),
    });
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| key_err(path, format!("{e} (an existing key is never overwritten)")))?;
    f.write_all(pem.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| key_err(path, e))?;
    std::fs::write(&pub_path, format!("{public}\n")).map_err(|e| key_err(&pub_path, e))?;
    Ok(public)
}

/// Loads an unencrypted private key (OpenSSH, or the PEM formats russh reads).
pub fn load_private(path: &Path) -> Result<PrivateKey, SshError> {
    let text = std::fs::read_to_string(path).map_err(|e| key_err(path, e))?;
    if let Ok(k) = PrivateKey::from_openssh(&text)
        && k.is_encrypted()
    {
        return Err(key_err(
            path,
            "passphrase-protected keys are not supported (the daemon runs unattended)",
        ));
    }
    russh::keys::decode_secret_key(&text, None).map_err(|e| key_err(path, e))
}

/// `SHA256:...`, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Parses one authorized_keys / `.pub` line: optional options, then type, base64 key,
/// optional comment. Returns the key and its comment.
pub fn parse_authorized_line(line: &str) -> Option<(PublicKey, String)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    // Try the whole line, then drop a leading options field (which may hold quoted
    // spaces: skip to the first field that parses as a key).
    if let Ok(k) = PublicKey::from_openssh(line) {
        let c = k.comment().to_string();
        return Some((k, c));
    }
    let mut rest = line;
    while let Some(i) = next_field(rest) {
        rest = &rest[i..];
        if let Ok(k) = PublicKey::from_openssh(rest) {
            let c = k.comment().to_string();
            return Some((k, c));
        }
    }
    None
}

/// Where the next whitespace-separated field starts (quotes respected).
fn next_field(s: &str) -> Option<usize> {
    let mut quoted = false;
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => quoted = !quoted,
            b' ' | b'\t' if !quoted => {
                while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                    i += 1;
                }
                return (i < b.len()).then_some(i);
            }
            _ => {}
        }
        i += 1;
    }
    None
}
