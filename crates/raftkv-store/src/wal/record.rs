//! The on-disk format of a segment: a header, then records.
//!
//! ```text
//! segment header (16 bytes): magic "raftkvWL" | format u32 LE (1) | crc32c of the 12 bytes before, u32 LE
//! record:  len u32 LE | hcrc u32 LE | kind u8 | dcrc u32 LE | payload (len bytes) | 0xA5
//!          hcrc = crc32c(len bytes ++ kind), dcrc = crc32c(payload)
//! entry payload (kind 1): index u64 LE | term u64 LE | leader node u64 LE | the entry (bincode)
//! ```
//!
//! The length has a checksum of its own, so a damaged length is never followed off into the
//! rest of the file; the trailing marker byte tells a record whose write was cut short (the
//! marker is still zero) from a complete record damaged later (the marker is there, the
//! checksum fails). Segments are preallocated with zeros, so the log ends where an all-zero
//! header starts.
//!
//! [`scan`] reads a segment's bytes into records and decides how it ends: cleanly, with a
//! *torn* tail (the last write cut short by a crash: everything from the bad record on is
//! unwritten — the caller cuts it off), or *damaged* (a bad record with written data after
//! it, or a complete record failing its checksum: the caller refuses to start).

/// Bytes before a segment's first record.
pub const SEGMENT_HEADER_BYTES: usize = 16;
const MAGIC: &[u8; 8] = b"raftkvWL";
const SEGMENT_FORMAT: u32 = 1;
/// Bytes of a record besides its payload.
pub const RECORD_OVERHEAD: usize = 14;
/// Offset of a record's payload from the record's start.
pub const PAYLOAD_OFFSET: usize = 13;
const TRAILER: u8 = 0xA5;
/// Bytes an entry payload holds before the entry itself.
pub const ENTRY_HEADER_BYTES: usize = 24;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A log entry (payload: see the module docs).
    Entry = 1,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Kind::Entry),
            _ => None,
        }
    }
}

/// The 16-byte header every segment starts with.
pub fn segment_header() -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_FORMAT.to_le_bytes());
    let crc = crc32c::crc32c(&h[..12]);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a segment's header; the error says what is wrong with it.
pub fn check_segment_header(bytes: &[u8]) -> Result<(), String> {
    let h = bytes
        .get(..SEGMENT_HEADER_BYTES)
        .ok_or_else(|| format!("{} bytes, shorter than a segment header", bytes.len()))?;
    if &h[..8] != MAGIC {
        return Err("not a raftkv write-ahead log segment (bad magic)".into());
    }
    if crc32c::crc32c(&h[..12]).to_le_bytes() != h[12..16] {
        return Err("segment header checksum mismatch".into());
    }
    let format = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if format != SEGMENT_FORMAT {
        return Err(format!(
            "segment format {format}, this build reads {SEGMENT_FORMAT}; was it written by a newer raftkv?"
        ));
    }
    Ok(())
}

/// Appends a record of `kind` holding `payload` to `out`.
pub fn encode_record(out: &mut Vec<u8>, kind: Kind, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let len_bytes = len.to_le_bytes();
    let mut hasher_input = [0u8; 5];
    hasher_input[..4].copy_from_slice(&len_bytes);
    hasher_input[4] = kind as u8;
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&crc32c::crc32c(&hasher_input).to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out.push(TRAILER);
}

/// Checks a payload read back from disk against its record's data checksum.
pub fn payload_intact(record: &[u8]) -> bool {
    record.len() >= RECORD_OVERHEAD
        && record[PAYLOAD_OFFSET..record.len() - 1].len() as u64
            == u64::from(u32::from_le_bytes([record[0], record[1], record[2], record[3]]))
        && crc32c::crc32c(&record[PAYLOAD_OFFSET..record.len() - 1]).to_le_bytes() == record[9..13]
        && record[record.len() - 1] == TRAILER
}

/// One record found by [`scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub kind: Kind,
    /// Offset of the record in the segment.
    pub offset: usize,
    /// Length of the whole record.
    pub len: usize,
}

impl Found {
    pub fn payload<'a>(&self, segment: &'a [u8]) -> &'a [u8] {
        &segment[self.offset + PAYLOAD_OFFSET..self.offset + self.len - 1]
    }
}

/// How a segment's records end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// At `at`: nothing but zeros (or the end of the file) follows.
    Clean { at: usize },
    /// At `at`: a write cut short; nothing written follows it.
    Torn { at: usize },
    /// At `at`: a damaged record, for the reason given.
    Damaged { at: usize, why: String },
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

/// Splits a segment's bytes (header included) into records and says how they end.
pub fn scan(segment: &[u8]) -> (Vec<Found>, End) {
    let mut found = Vec::new();
    let mut at = SEGMENT_HEADER_BYTES.min(segment.len());
    loop {
        let rest = &segment[at..];
        if all_zero(rest.get(..PAYLOAD_OFFSET).unwrap_or(rest)) {
            // An unwritten header: the end of the log, if nothing was written after it.
            let end = if all_zero(rest) {
                End::Clean { at }
            } else if rest.len() < PAYLOAD_OFFSET {
                End::Torn { at }
            } else {
                End::Damaged {
                    at,
                    why: "written data after an empty record header".into(),
                }
            };
            return (found, end);
        }
        if rest.len() < PAYLOAD_OFFSET {
            // A header cut short by the end of the file.
            return (found, End::Torn { at });
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let kind_byte = rest[8];
        let mut header = [0u8; 5];
        header[..4].copy_from_slice(&rest[..4]);
        header[4] = kind_byte;
        if crc32c::crc32c(&header).to_le_bytes() != rest[4..8] {
            // The length cannot be trusted: torn if nothing was written after this header.
            let end = if all_zero(&rest[PAYLOAD_OFFSET..]) {
                End::Torn { at }
            } else {
                End::Damaged {
                    at,
                    why: "record header checksum mismatch".into(),
                }
            };
            return (found, end);
        }
        let total = len + RECORD_OVERHEAD;
        if rest.len() < total {
            // The file ends inside a record whose header is sound: its write was cut short.
            return (found, End::Torn { at });
        }
        let trailer_ok = rest[total - 1] == TRAILER;
        let data_ok = crc32c::crc32c(&rest[PAYLOAD_OFFSET..total - 1]).to_le_bytes() == rest[9..13];
        if !(trailer_ok && data_ok) {
            let end = if !trailer_ok && all_zero(&rest[total..]) {
                End::Torn { at }
            } else {
                End::Damaged {
                    at,
                    why: "record data checksum mismatch".into(),
                }
            };
            return (found, end);
        }
        let Some(kind) = Kind::from_byte(kind_byte) else {
            return (
                found,
                End::Damaged {
                    at,
                    why: format!("unknown record kind {kind_byte}; was it written by a newer raftkv?"),
                },
            );
        };
        found.push(Found {
            kind,
            offset: at,
            len: total,
        });
        at += total;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment_with(payloads: &[&[u8]], preallocated: usize) -> (Vec<u8>, Vec<usize>) {
        let mut seg = segment_header().to_vec();
        let mut starts = Vec::new();
        for p in payloads {
            starts.push(seg.len());
            encode_record(&mut seg, Kind::Entry, p);
        }
        if seg.len() < preallocated {
            seg.resize(preallocated, 0);
        }
        (seg, starts)
    }

    #[test]
    fn records_round_trip_and_a_zero_tail_is_a_clean_end() {
        let (seg, starts) = segment_with(&[b"one", b"", b"three"], 4096);
        let (found, end) = scan(&seg);
        assert_eq!(found.len(), 3);
        assert_eq!(found.iter().map(|f| f.offset).collect::<Vec<_>>(), starts);
        assert_eq!(found[2].payload(&seg), b"three");
        let last = found[2];
        assert_eq!(
            end,
            End::Clean {
                at: last.offset + last.len
            }
        );
        assert!(payload_intact(&seg[last.offset..last.offset + last.len]));
        check_segment_header(&seg).unwrap();
    }

    #[test]
    fn a_last_record_cut_at_any_byte_is_a_torn_tail() {
        for preallocated in [0, 4096] {
            let (full, starts) = segment_with(&[b"first record", b"second, the one cut short"], 0);
            let last = starts[1];
            for cut in last..full.len() {
                let mut seg = full[..cut].to_vec();
                if seg.len() < preallocated {
                    seg.resize(preallocated, 0);
                }
                let (found, end) = scan(&seg);
                assert_eq!(found.len(), 1, "cut at {cut}");
                let expected = if cut == last {
                    End::Clean { at: last }
                } else {
                    End::Torn { at: last }
                };
                assert_eq!(end, expected, "cut at {cut}, preallocated {preallocated}");
            }
        }
    }

    #[test]
    fn a_flipped_bit_before_the_tail_is_damage() {
        let (seg, starts) = segment_with(&[b"first", b"second", b"third"], 4096);
        for byte in starts[0]..starts[1] {
            for bit in 0..8 {
                let mut bad = seg.clone();
                bad[byte] ^= 1 << bit;
                let (found, end) = scan(&bad);
                assert!(found.is_empty(), "byte {byte} bit {bit}");
                assert!(
                    matches!(end, End::Damaged { at, .. } if at == starts[0]),
                    "byte {byte} bit {bit}: {end:?}"
                );
            }
        }
    }

    #[test]
    fn a_flipped_bit_in_a_complete_last_record_is_damage_not_a_torn_tail() {
        let (mut seg, starts) = segment_with(&[b"first", b"second"], 4096);
        seg[starts[1] + PAYLOAD_OFFSET] ^= 0x10;
        let (found, end) = scan(&seg);
        assert_eq!(found.len(), 1);
        assert!(matches!(end, End::Damaged { at, .. } if at == starts[1]), "{end:?}");
    }

    #[test]
    fn a_bad_segment_header_is_named() {
        let mut h = segment_header();
        h[3] ^= 1;
        assert!(check_segment_header(&h).unwrap_err().contains("magic"));
        let mut h = segment_header();
        h[13] ^= 1;
        assert!(check_segment_header(&h).unwrap_err().contains("checksum"));
    }
}
