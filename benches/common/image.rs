//! Synthetic VM memory images for benchmarks: `mib` MiB of 4 KiB pages, a given share of
//! them zero (in runs, as free memory is), the rest like RAM: 40% text, 40% code-like
//! (short repeated instruction patterns with varying operands), 20% random.
#![allow(dead_code)]

pub const PAGE: u64 = 4096;

/// A small deterministic generator (xorshift64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let x = &mut self.0;
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }
}

const TEXT: &[u8] = b"Linux version 6.1.0 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC \
    systemd[1]: Started Journal Service. kernel: EXT4-fs (vda1): mounted filesystem \
    with ordered data mode. /usr/lib/x86_64-linux-gnu/libc.so.6 GLIBC_2.34 ";

/// Fills `page` like a RAM or file page: 40% text, 40% code-like, 20% random; never all
/// zero.
pub fn fill_page(page: &mut [u8], rng: &mut Rng) {
    match rng.next() % 5 {
        0 | 1 => {
            let shift = (rng.next() % TEXT.len() as u64) as usize;
            for (i, c) in page.iter_mut().enumerate() {
                *c = TEXT[(i + shift) % TEXT.len()];
            }
        }
        2 | 3 => {
            for chunk in page.chunks_mut(16) {
                let op = rng.next();
                let code = [
                    0x48,
                    0x8b,
                    0x45,
                    (op & 0x7f) as u8,
                    0x48,
                    0x89,
                    0xc7,
                    0xe8,
                    (op >> 8) as u8,
                    (op >> 16) as u8 & 0x0f,
                    0,
                    0,
                    0x85,
                    0xc0,
                    0x74,
                    0x1c,
                ];
                chunk.copy_from_slice(&code[..chunk.len()]);
            }
        }
        _ => {
            for chunk in page.chunks_mut(8) {
                let v = rng.next().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
        }
    }
    page[0] |= 1;
}

/// The image and its zero bytes.
pub fn memory_image(mib: u64, zero_percent: u64, seed: u64) -> (Vec<u8>, u64) {
    let pages = (mib << 20) / PAGE;
    let mut img = vec![0u8; (pages * PAGE) as usize];
    let mut rng = Rng(seed | 1);
    let mut p = 0u64;
    let mut zero = 0u64;
    while p < pages {
        // A data run of 1..=16 pages, then a zero run sized for the wanted share.
        let data = 1 + rng.next() % 16;
        let z = data * zero_percent / (100 - zero_percent).max(1);
        let z = (z * (50 + rng.next() % 100)) / 100;
        for q in p..(p + data).min(pages) {
            fill_page(
                &mut img[(q * PAGE) as usize..((q + 1) * PAGE) as usize],
                &mut rng,
            );
        }
        p = (p + data).min(pages);
        let end = (p + z).min(pages);
        zero += (end - p) * PAGE;
        p = end;
    }
    (img, zero)
}

/// Runs `gridvfs meta generate ARGS FILE` (the product's tool) and insists it succeeds.
pub fn meta_generate(file: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gridvfs"))
        .args(["meta", "generate"])
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gridvfs meta generate {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
