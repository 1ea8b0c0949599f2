//! The working set as text: what `gridvfs workset` prints (the ranges a proxy recorded)
//! and `gridvfs meta workset --from` reads (to write them into a sidecar). Text, so that
//! an operator can look at it, edit it, keep it, or concatenate the profiles of several
//! runs; the two commands run on different machines (the compute node's proxy, the
//! server that holds the files).
//!
//! ```text
//! # gridvfs working set of /export/golden/img0/disk.img: 1073741824 bytes, 2 ranges, 69632 bytes
//! 0 65536
//! 1048576 4096
//! ```
//!
//! One range per line, `OFFSET LEN` in decimal bytes; blank lines and lines starting
//! with `#` are skipped. [`parse`] reads it with every line checked (an error names the
//! line), bounded in line length and in ranges held, and returns the ranges sorted and
//! merged as a sidecar stores them.

use std::io::{self, BufRead, Read};
use std::ops::Range;

use super::format::MAX_WORKSET;

/// Longest line accepted: two 20-digit numbers and generous blanks.
pub const MAX_LINE: usize = 256;

/// Why a working-set text was refused.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("cannot read the working set: {0}")]
    Read(#[from] io::Error),
    #[error("line {line}: {why}")]
    Line { line: u64, why: BadLine },
    #[error(
        "over {MAX_WORKSET} separate ranges (after merging overlapping and touching ones): \
         a sidecar holds at most {MAX_WORKSET}"
    )]
    TooMany,
}

/// What is wrong with one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadLine {
    #[error("longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("not UTF-8 text")]
    NotText,
    #[error("{0} fields; expected two decimal numbers, OFFSET LEN")]
    Fields(usize),
    #[error("`{0}` is not a decimal number from 0 to 18446744073709551615")]
    Number(String),
    #[error("length 0 (a range holds at least one byte)")]
    ZeroLength,
    #[error("range {offset}+{len} ends past the end of the file ({size} bytes)")]
    PastEnd { offset: u64, len: u64, size: u64 },
}

/// The text of a working set: the header line (and a comment if the recording was
/// truncated), then one `OFFSET LEN` line per range. `ranges` are printed in the order
/// given (the proxy gives them sorted and merged).
pub fn format(path: &str, size: u64, ranges: &[[u64; 2]], truncated: bool) -> String {
    use std::fmt::Write;
    let bytes: u64 = ranges.iter().map(|r| r[1]).sum();
    let mut o = format!(
        "# gridvfs working set of {path}: {size} bytes, {} ranges, {bytes} bytes\n",
        ranges.len()
    );
    if truncated {
        o.push_str(TRUNCATED);
    }
    for [off, len] in ranges {
        let _ = writeln!(o, "{off} {len}");
    }
    o
}

/// The comment line of a truncated recording.
pub const TRUNCATED: &str = "# truncated: the proxy stopped recording this file at its range \
                             limit; READs after that are not in it\n";

/// Reads a working set for a file of `size` bytes: every range non-empty and inside the
/// file. Ranges may come in any order and overlap; they are returned sorted, with
/// overlapping and touching ones merged. Holds at most twice [`MAX_WORKSET`] ranges
/// while reading, whatever the input's length.
pub fn parse(mut r: impl BufRead, size: u64) -> Result<Vec<Range<u64>>, TextError> {
    let mut ranges: Vec<Range<u64>> = Vec::new();
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        buf.clear();
        let n = r
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        line += 1;
        let bad = |why| TextError::Line { line, why };
        if buf.first() == Some(&b'#') {
            // A comment of any length (`gridvfs workset`'s header names the path): the
            // rest of it is read and dropped in bounded pieces.
            while buf.last() != Some(&b'\n') {
                buf.clear();
                if r.by_ref()
                    .take(MAX_LINE as u64)
                    .read_until(b'\n', &mut buf)?
                    == 0
                {
                    break;
                }
            }
            continue;
        }
        if buf.len() > MAX_LINE && buf.last() != Some(&b'\n') {
            return Err(bad(BadLine::TooLong));
        }
        let text = std::str::from_utf8(&buf).map_err(|_| bad(BadLine::NotText))?;
        let text = text.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = text.split_ascii_whitespace().collect();
        let [off, len] = fields[..] else {
            return Err(bad(BadLine::Fields(fields.len())));
        };
        let (offset, len) = (number(off).map_err(bad)?, number(len).map_err(bad)?);
        if len == 0 {
            return Err(bad(BadLine::ZeroLength));
        }
        let Some(end) = offset.checked_add(len).filter(|&e| e <= size) else {
            return Err(bad(BadLine::PastEnd { offset, len, size }));
        };
        ranges.push(offset..end);
        if ranges.len() > 2 * MAX_WORKSET {
            merge(&mut ranges);
            if ranges.len() > MAX_WORKSET {
                return Err(TextError::TooMany);
            }
        }
    }
    merge(&mut ranges);
    if ranges.len() > MAX_WORKSET {
        return Err(TextError::TooMany);
    }
    Ok(ranges)
}

/// A decimal u64: digits only (no sign, no `0x`).
fn number(s: &str) -> Result<u64, BadLine> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits
        .then(|| s.parse().ok())
        .flatten()
        .ok_or_else(|| BadLine::Number(s.chars().take(40).collect()))
}

/// Sorts `ranges` and merges overlapping and touching ones, in place.
pub fn merge(ranges: &mut Vec<Range<u64>>) {
    ranges.sort_unstable_by_key(|r| r.start);
    let mut out = 0;
    for i in 0..ranges.len() {
        let r = ranges[i].clone();
        if out > 0 && r.start <= ranges[out - 1].end {
            ranges[out - 1].end = ranges[out - 1].end.max(r.end);
        } else {
            ranges[out] = r;
            out += 1;
        }
    }
    ranges.truncate(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str, size: u64) -> Result<Vec<Range<u64>>, TextError> {
        parse(s.as_bytes(), size)
    }

    /// Ranges as (start, end) pairs, to compare with literals.
    fn pairs(v: &[Range<u64>]) -> Vec<(u64, u64)> {
        v.iter().map(|r| (r.start, r.end)).collect()
    }

    /// The line and the reason of a refused text.
    fn refused(s: &str, size: u64) -> (u64, BadLine) {
        match parse_str(s, size) {
            Err(TextError::Line { line, why }) => (line, why),
            other => panic!("{s:?}: {other:?}"),
        }
    }

    /// Found in review: the header names the path, so with a long path it passed the
    /// line limit and `meta workset` refused what `gridvfs workset` printed.
    #[test]
    fn a_header_with_a_long_path_is_read_back() {
        let path = format!("/export/{}/disk.img", "d".repeat(4000));
        let text = format(&path, 10_000, &[[0, 4096], [8192, 100]], true);
        assert!(text.lines().next().unwrap().len() > MAX_LINE);
        assert_eq!(
            pairs(&parse_str(&text, 10_000).unwrap()),
            vec![(0, 4096), (8192, 8292)]
        );
        // A data line that long is still refused.
        let long = format!("0 {}\n", "1".repeat(MAX_LINE));
        assert_eq!(refused(&long, 10_000).0, 1);
    }

    #[test]
    fn what_format_prints_parse_reads_back() {
        let text = format("/export/d/img", 10_000, &[[0, 4096], [8192, 100]], false);
        assert_eq!(
            text,
            "# gridvfs working set of /export/d/img: 10000 bytes, 2 ranges, 4196 bytes\n\
             0 4096\n8192 100\n"
        );
        assert_eq!(parse_str(&text, 10_000).unwrap(), [0..4096, 8192..8292]);
        // An empty working set is a header only, and reads back empty.
        let empty = format("x", 5, &[], false);
        assert_eq!(
            empty,
            "# gridvfs working set of x: 5 bytes, 0 ranges, 0 bytes\n"
        );
        assert_eq!(parse_str(&empty, 5).unwrap(), []);
        // A truncated recording says so in a comment, which the parser skips.
        let cut = format("x", 5, &[[1, 2]], true);
        assert_eq!(
            cut,
            format!("# gridvfs working set of x: 5 bytes, 1 ranges, 2 bytes\n{TRUNCATED}1 2\n")
        );
        assert_eq!(pairs(&parse_str(&cut, 5).unwrap()), [(1, 3)]);
    }

    #[test]
    fn comments_blanks_any_order_and_overlaps_are_accepted_and_merged() {
        let text = "\n# a comment\n  # an indented one\n\
                    100 50\r\n\
                    \t0  10 \n\
                    140 20\n\
                    160 1\n\
                    10 5\n\
                    \n\
                    500 1";
        // 0..10 and 10..15 touch; 100..150, 140..160 overlap, 160..161 touches.
        assert_eq!(parse_str(text, 1000).unwrap(), [0..15, 100..161, 500..501]);
        // A range ending exactly at the end of the file is inside it.
        assert_eq!(pairs(&parse_str("990 10\n", 1000).unwrap()), [(990, 1000)]);
    }

    #[test]
    fn every_kind_of_bad_line_is_refused_with_its_line_number() {
        let ok = "# header\n0 10\n\n";
        let cases: [(&str, BadLine); 10] = [
            ("100\n", BadLine::Fields(1)),
            ("1 2 3\n", BadLine::Fields(3)),
            ("ten 10\n", BadLine::Number("ten".into())),
            ("10 -1\n", BadLine::Number("-1".into())),
            ("+1 10\n", BadLine::Number("+1".into())),
            ("0x10 10\n", BadLine::Number("0x10".into())),
            (
                "18446744073709551616 1\n",
                BadLine::Number("18446744073709551616".into()),
            ),
            ("50 0\n", BadLine::ZeroLength),
            (
                "95 10\n",
                BadLine::PastEnd {
                    offset: 95,
                    len: 10,
                    size: 100,
                },
            ),
            (
                "18446744073709551615 1\n",
                BadLine::PastEnd {
                    offset: u64::MAX,
                    len: 1,
                    size: 100,
                },
            ),
        ];
        for (bad, why) in cases {
            // Fourth line: after a comment, a good range and a blank line.
            assert_eq!(
                refused(&format!("{ok}{bad}0 1\n"), 100),
                (4, why),
                "{bad:?}"
            );
        }
        let long = format!("0 1\n{}1 1\n", " ".repeat(MAX_LINE));
        assert_eq!(refused(&long, 100), (2, BadLine::TooLong));
        let mut not_text = b"0 1\n".to_vec();
        not_text.extend_from_slice(b"\xff\xfe 1\n");
        match parse(&not_text[..], 100) {
            Err(TextError::Line { line: 2, why }) => assert_eq!(why, BadLine::NotText),
            other => panic!("{other:?}"),
        }
        // The error message names the line.
        let e = parse_str("0 1\n5 0\n", 100).unwrap_err().to_string();
        assert_eq!(e, "line 2: length 0 (a range holds at least one byte)");
    }

    #[test]
    fn more_separate_ranges_than_a_sidecar_holds_are_refused_but_mergeable_ones_are_not() {
        let size = 1 << 40;
        // MAX_WORKSET separate ranges: fine.
        let mut text = String::new();
        for i in 0..MAX_WORKSET as u64 {
            text.push_str(&format!("{} 1\n", i * 2));
        }
        assert_eq!(parse_str(&text, size).unwrap().len(), MAX_WORKSET);
        // One more: refused.
        text.push_str(&format!("{} 1\n", MAX_WORKSET as u64 * 2));
        assert!(matches!(parse_str(&text, size), Err(TextError::TooMany)));
        // Three times as many lines that merge into one range: fine (merged on the way).
        let mut text = String::new();
        for i in 0..3 * MAX_WORKSET as u64 {
            text.push_str(&format!("{i} 1\n"));
        }
        assert_eq!(
            pairs(&parse_str(&text, size).unwrap()),
            [(0, 3 * MAX_WORKSET as u64)]
        );
    }

    #[test]
    fn merge_sorts_and_joins_overlapping_and_touching_ranges() {
        let mut v = vec![30..40, 0..10, 10..20, 35..50, 60..61, 5..8];
        merge(&mut v);
        assert_eq!(v, [0..20, 30..50, 60..61]);
        let mut empty: Vec<Range<u64>> = Vec::new();
        merge(&mut empty);
        assert!(empty.is_empty());
    }
}
