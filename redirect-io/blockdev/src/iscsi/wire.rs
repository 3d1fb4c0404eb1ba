//! Moving whole PDUs over a byte stream: a header, any AHS, the data segment and its
//! padding, in one vectored write; and reading a header and its data back.

use std::io::{self, IoSlice, Read, Write};

use super::pdu::{BHS_LEN, Bhs};

const PAD: [u8; 4] = [0; 4];

/// Writes a PDU: the header and `data`, padded to 4 bytes, without copying the data.
pub fn write_pdu(w: &mut impl Write, bhs: &Bhs, data: &[u8]) -> io::Result<()> {
    let pad = (4 - data.len() % 4) % 4;
    write_all_vectored(
        w,
        &mut [
            IoSlice::new(&bhs.0),
            IoSlice::new(data),
            IoSlice::new(&PAD[..pad]),
        ],
    )
}

/// The most buffers one vectored write takes (Linux's IOV_MAX is 1024).
const MAX_SLICES: usize = 512;

/// Writes PDUs that are headers only (commands without data), in as few vectored
/// writes as the system allows.
pub fn write_headers(w: &mut impl Write, heads: &[&Bhs]) -> io::Result<()> {
    for chunk in heads.chunks(MAX_SLICES) {
        let mut bufs: Vec<IoSlice<'_>> = chunk.iter().map(|b| IoSlice::new(&b.0)).collect();
        write_all_vectored(w, &mut bufs)?;
    }
    Ok(())
}

/// Writes every byte of `bufs`, in order.
fn write_all_vectored(w: &mut impl Write, bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    let mut slices: &mut [IoSlice<'_>] = bufs;
    while !slices.is_empty() {
        match w.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads one header; a malformed one is an `InvalidData` error carrying the reason.
pub fn read_header(r: &mut impl Read, max_data: u32) -> io::Result<Bhs> {
    let mut raw = [0u8; BHS_LEN];
    r.read_exact(&mut raw)?;
    let bhs = Bhs::decode(&raw, max_data).map_err(invalid)?;
    // No AHS is negotiated for anything a target sends us; skip any that comes.
    let mut ahs = vec![0u8; bhs.ahs_len()];
    r.read_exact(&mut ahs)?;
    Ok(bhs)
}

/// Reads the data segment of `bhs` (and its padding) into a new buffer.
pub fn read_data(r: &mut impl Read, bhs: &Bhs) -> io::Result<Vec<u8>> {
    let mut data = vec![0u8; bhs.padded_data_len()];
    r.read_exact(&mut data)?;
    data.truncate(bhs.data_len() as usize);
    Ok(data)
}

/// Reads and drops `n` bytes.
pub fn skip(r: &mut impl Read, n: usize) -> io::Result<()> {
    let copied = io::copy(&mut r.take(n as u64), &mut io::sink())?;
    if copied as usize != n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// A protocol error (a [`PduError`](super::pdu::PduError) or a message) as an `io::Error` of kind
/// `InvalidData`.
pub fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::pdu::{Bhs, op};
    use super::*;

    #[test]
    fn pdu_round_trips_through_a_stream() {
        let mut b = Bhs::new(op::NOP_IN, false);
        b.0[7] = 5;
        let mut out = Vec::new();
        write_pdu(&mut out, &b, b"hello").unwrap();
        assert_eq!(out.len(), 48 + 8);
        let mut r = &out[..];
        let h = read_header(&mut r, 8192).unwrap();
        assert_eq!(read_data(&mut r, &h).unwrap(), b"hello");
        assert!(r.is_empty());
    }

    #[test]
    fn headers_go_out_in_order_in_one_stream() {
        let heads: Vec<Bhs> = (0..1100u32)
            .map(|i| {
                let mut b = Bhs::new(op::NOP_IN, false);
                b.0[16..20].copy_from_slice(&i.to_be_bytes());
                b
            })
            .collect();
        let refs: Vec<&Bhs> = heads.iter().collect();
        let mut out = Vec::new();
        write_headers(&mut out, &refs).unwrap();
        assert_eq!(out.len(), 48 * 1100);
        let mut r = &out[..];
        for i in 0..1100u32 {
            let h = read_header(&mut r, 8192).unwrap();
            assert_eq!(h.0[16..20], i.to_be_bytes());
        }
        assert!(r.is_empty());
    }

    #[test]
    fn a_bad_header_is_invalid_data() {
        let mut r = &[0u8; 48][..];
        let e = read_header(&mut r, 8192).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
