//! Counting the frames of a pcap stream as it passes, so that a capture can stop after N of
//! them at a frame's end: the file header (24 bytes, its magic giving the byte order), then
//! per frame a 16-byte header whose third word is the length of the bytes that follow.

/// Where a stream is: in the file header, in a frame's header, or in its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    FileHeader,
    FrameHeader,
    FrameData(u64),
}

/// A pcap stream's frames, counted as its bytes go by.
#[derive(Debug)]
pub struct Frames {
    at: At,
    /// The header being read (file or frame).
    header: Vec<u8>,
    swapped: bool,
    pub frames: u64,
    pub bytes: u64,
    /// Stop after this many frames.
    limit: Option<u64>,
}

impl Frames {
    pub fn new(limit: Option<u64>) -> Frames {
        Frames {
            at: At::FileHeader,
            header: Vec::with_capacity(24),
            swapped: false,
            frames: 0,
            bytes: 0,
            limit,
        }
    }

    /// Whether the limit is reached (at a frame's end).
    pub fn full(&self) -> bool {
        self.limit.is_some_and(|l| self.frames >= l) && self.at == At::FrameHeader
    }

    /// Takes `chunk` in and returns how much of it belongs before the limit: all of it, or
    /// the part up to the end of the last frame wanted.
    pub fn feed(&mut self, chunk: &[u8]) -> usize {
        let mut i = 0;
        while i < chunk.len() {
            if self.full() {
                break;
            }
            match self.at {
                At::FileHeader | At::FrameHeader => {
                    let want = if self.at == At::FileHeader { 24 } else { 16 };
                    let take = (want - self.header.len()).min(chunk.len() - i);
                    self.header.extend_from_slice(&chunk[i..i + take]);
                    i += take;
                    if self.header.len() == want {
                        self.at = self.header_done();
                        self.header.clear();
                    }
                }
                At::FrameData(left) => {
                    let take = left.min((chunk.len() - i) as u64);
                    i += take as usize;
                    self.at = if take == left {
                        self.frames += 1;
                        At::FrameHeader
                    } else {
                        At::FrameData(left - take)
                    };
                }
            }
        }
        self.bytes += i as u64;
        i
    }

    /// What follows a header just read whole.
    fn header_done(&mut self) -> At {
        let word = |h: &[u8], at: usize| {
            let b = [h[at], h[at + 1], h[at + 2], h[at + 3]];
            if self.swapped {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        };
        match self.at {
            At::FileHeader => {
                // Microsecond or nanosecond pcap, written big-endian: the magic reads swapped.
                let magic = u32::from_le_bytes([
                    self.header[0],
                    self.header[1],
                    self.header[2],
                    self.header[3],
                ]);
                self.swapped = matches!(magic, 0xd4c3_b2a1 | 0x4d3c_b2a1);
                At::FrameHeader
            }
            _ => match word(&self.header, 8) {
                0 => {
                    self.frames += 1;
                    At::FrameHeader
                }
                n => At::FrameData(u64::from(n)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(frames: &[&[u8]]) -> Vec<u8> {
        let mut s = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        s.extend([0; 8]);
        s.extend(65535u32.to_le_bytes());
        s.extend(1u32.to_le_bytes());
        for f in frames {
            s.extend([0; 8]);
            s.extend((f.len() as u32).to_le_bytes());
            s.extend((f.len() as u32).to_le_bytes());
            s.extend_from_slice(f);
        }
        s
    }

    #[test]
    fn counts_frames_however_the_stream_is_cut() {
        let s = stream(&[b"abc", b"", b"0123456789"]);
        for size in [1, 2, 7, 16, 1000] {
            let mut f = Frames::new(None);
            for chunk in s.chunks(size) {
                assert_eq!(f.feed(chunk), chunk.len());
            }
            assert_eq!((f.frames, f.bytes), (3, s.len() as u64), "chunks of {size}");
        }
    }

    #[test]
    fn stops_at_the_end_of_the_last_frame_wanted() {
        let s = stream(&[b"abc", b"defg", b"hi"]);
        let two = stream(&[b"abc", b"defg"]).len();
        for size in [1, 3, 5, 1000] {
            let mut f = Frames::new(Some(2));
            let mut kept = Vec::new();
            for chunk in s.chunks(size) {
                let n = f.feed(chunk);
                kept.extend_from_slice(&chunk[..n]);
                if f.full() {
                    break;
                }
            }
            assert_eq!(kept.len(), two, "chunks of {size}");
            assert_eq!(f.frames, 2);
        }
    }

    #[test]
    fn reads_a_big_endian_stream() {
        let mut s = vec![0xa1, 0xb2, 0xc3, 0xd4];
        s.extend([0; 20]);
        s.extend([0; 8]);
        s.extend(5u32.to_be_bytes());
        s.extend(5u32.to_be_bytes());
        s.extend(b"hello");
        let mut f = Frames::new(Some(1));
        assert_eq!(f.feed(&s), s.len());
        assert!(f.full());
    }
}
