//! Decoding fuzz bytes into structured inputs, the same way in both worlds.
//!
//! A [`Cursor`] reads bytes and never fails: past the end it yields zeros,
//! so every byte string is a valid input and libFuzzer's mutations of the
//! corpus stay meaningful.

/// Reads structured values from fuzz bytes.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// Reads from `data`.
    pub fn new(data: &'a [u8]) -> Cursor<'a> {
        Cursor { data }
    }

    /// True once everything has been read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// One byte (0 past the end).
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// A little-endian u64 from up to 8 bytes.
    pub fn u64(&mut self) -> u64 {
        let mut v = 0u64;
        for i in 0..8 {
            v |= u64::from(self.byte()) << (8 * i);
        }
        v
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }

    /// A length-prefixed byte string (one length byte).
    pub fn bytes(&mut self) -> &'a [u8] {
        let n = self.byte() as usize;
        self.take(n)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(usize::MAX)
    }

    /// One of `items`, chosen by a byte.
    pub fn choose<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.byte() as usize % items.len()]
    }
}

/// Decimal-ish values worth trying in any numeric header.
pub const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "-1",
    "420",
    "493",
    "511",
    "4480",
    "33188",
    "16877",
    "4294967295",
    "4294967296",
    "-2147483648",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "007",
    "+1",
    " 1",
    "1 ",
    "0x10",
    "",
    "-",
    "1e3",
];
