//! What each request is: a read or a write of which key, drawn from a seeded RNG, and
//! the pre-encoded RESP request templates the key is written into, so the hot path
//! copies bytes into a reused buffer and allocates nothing.
//!
//! Keys are `key:NNNNNNNNNNNN` (12 decimal digits), the format `redis-benchmark -r`
//! uses, so both tools touch the same keys. Values are `x` repeated, as
//! `redis-benchmark -d` sends them.

use skiff_net::resp::encode_request;

use bytes::BytesMut;

/// Digits in a key's number: `redis-benchmark`'s `__rand_int__` width.
pub const KEY_DIGITS: usize = 12;
/// The key prefix, as `redis-benchmark` writes it.
pub const KEY_PREFIX: &[u8] = b"key:";
/// Bytes in one key.
pub const KEY_BYTES: usize = KEY_PREFIX.len() + KEY_DIGITS;
/// Most distinct keys: every number fits the 12 digits.
pub const KEYS_MAX: u64 = 1_000_000_000_000;
/// Most keys a Zipf distribution may span: its normalising constant is a sum over
/// every key, computed once at start (10 M terms take about 0.1 s).
pub const ZIPF_KEYS_MAX: u64 = 10_000_000;

/// A read or a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// GET (RESP) or Range (etcd).
    Read,
    /// SET (RESP) or Put (etcd).
    Write,
}

/// SplitMix64: tiny, fast, and good enough to pick keys; seeded per connection so a
/// run's key sequence is reproducible with `--seed`.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n) without modulo bias (Lemire's multiply-shift).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// How keys are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeyDistribution {
    Uniform,
    /// Zipfian with exponent theta in (0, 1): key 0 is the most popular. YCSB's
    /// default skew is 0.99.
    Zipf(f64),
}

impl std::str::FromStr for KeyDistribution {
    type Err = String;

    fn from_str(s: &str) -> Result<KeyDistribution, String> {
        if s == "uniform" {
            return Ok(KeyDistribution::Uniform);
        }
        let theta = s
            .strip_prefix("zipf:")
            .ok_or_else(|| format!("`{s}` is not uniform or zipf:THETA"))?
            .parse::<f64>()
            .map_err(|e| format!("zipf theta `{s}`: {e}"))?;
        if !(theta > 0.0 && theta < 1.0) {
            return Err(format!("zipf theta must be between 0 and 1 exclusive (0.99 is usual), not {theta}"));
        }
        Ok(KeyDistribution::Zipf(theta))
    }
}

impl std::fmt::Display for KeyDistribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyDistribution::Uniform => write!(f, "uniform"),
            KeyDistribution::Zipf(t) => write!(f, "zipf:{t}"),
        }
    }
}

/// The Zipfian generator of Gray et al., "Quickly generating billion-record synthetic
/// databases" (SIGMOD 1994), as YCSB's `ZipfianGenerator` implements it: O(1) per draw
/// after an O(n) set-up.
#[derive(Clone, Debug)]
pub struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipf {
    /// # Panics
    /// If `n` is 0 or above [`ZIPF_KEYS_MAX`], or theta is outside (0, 1): the flag
    /// parser refuses those first.
    pub fn new(n: u64, theta: f64) -> Zipf {
        assert!(n > 0 && n <= ZIPF_KEYS_MAX, "zipf over {n} keys");
        assert!(theta > 0.0 && theta < 1.0, "zipf theta {theta}");
        let zeta = |n: u64| (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(n);
        let zeta2 = zeta(2.min(n));
        let alpha = 1.0 / (1.0 - theta);
        let eta = if n > 2 { (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan) } else { 0.0 };
        Zipf { n, theta, alpha, zetan, eta }
    }

    /// A key in [0, n).
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.next_f64();
        let uz = u * self.zetan;
        if uz < 1.0 || self.n == 1 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let k = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        k.min(self.n - 1)
    }
}

/// Draws each request's operation and key.
#[derive(Clone, Debug)]
pub struct Generator {
    rng: Rng,
    keys: u64,
    zipf: Option<Zipf>,
    read_ratio: f64,
}

impl Generator {
    /// `zipf` is shared set-up (see [`Zipf::new`]) when the distribution is Zipfian.
    pub fn new(seed: u64, keys: u64, zipf: Option<Zipf>, read_ratio: f64) -> Generator {
        Generator { rng: Rng::new(seed), keys, zipf, read_ratio }
    }

    pub fn next_request(&mut self) -> (Op, u64) {
        let op = if self.read_ratio > 0.0 && self.rng.next_f64() < self.read_ratio { Op::Read } else { Op::Write };
        let key = match &self.zipf {
            Some(z) => z.sample(&mut self.rng),
            None => self.rng.below(self.keys),
        };
        (op, key)
    }
}

/// Writes key number `n` as [`KEY_DIGITS`] zero-padded digits into `out`.
pub fn write_key_digits(n: u64, out: &mut [u8]) {
    debug_assert_eq!(out.len(), KEY_DIGITS);
    let mut v = n;
    for d in out.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// The full key `key:NNNNNNNNNNNN`.
pub fn key_bytes(n: u64) -> [u8; KEY_BYTES] {
    let mut k = [0u8; KEY_BYTES];
    k[..KEY_PREFIX.len()].copy_from_slice(KEY_PREFIX);
    write_key_digits(n, &mut k[KEY_PREFIX.len()..]);
    k
}

/// A request encoded once, with the offset of its key digits.
#[derive(Clone, Debug)]
struct Template {
    bytes: Vec<u8>,
    digits_at: usize,
}

impl Template {
    fn new(args: &[&[u8]]) -> Template {
        let mut out = BytesMut::new();
        encode_request(args, &mut out);
        // The key is the first argument after the command; its prefix comes before
        // any value byte, and values are all `x`.
        let digits_at =
            out.windows(KEY_PREFIX.len()).position(|w| w == KEY_PREFIX).expect("key in template") + KEY_PREFIX.len();
        Template { bytes: out.to_vec(), digits_at }
    }

    fn encode(&self, key: u64, out: &mut BytesMut) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        write_key_digits(key, &mut out[start + self.digits_at..start + self.digits_at + KEY_DIGITS]);
    }
}

/// `SET key value` and `GET key`, encoded once by the RESP codec; a request is a copy
/// with the key digits patched in.
#[derive(Clone, Debug)]
pub struct RespTemplates {
    set: Template,
    get: Template,
}

impl RespTemplates {
    pub fn new(value_size: usize) -> RespTemplates {
        let key = key_bytes(0);
        let value = vec![b'x'; value_size];
        RespTemplates { set: Template::new(&[b"SET", &key, &value]), get: Template::new(&[b"GET", &key]) }
    }

    /// Appends the request for `op` on key number `key` to `out`.
    pub fn encode(&self, op: Op, key: u64, out: &mut BytesMut) {
        match op {
            Op::Write => self.set.encode(key, out),
            Op::Read => self.get.encode(key, out),
        }
    }

    /// Bytes of the larger request, for sizing write buffers up front.
    pub fn request_bytes_max(&self) -> usize {
        self.set.bytes.len().max(self.get.bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_net::{Request, RequestDecoder};

    #[test]
    fn templates_encode_what_the_codec_decodes() {
        let t = RespTemplates::new(5);
        let mut out = BytesMut::new();
        t.encode(Op::Write, 42, &mut out);
        t.encode(Op::Read, 999_999_999_999, &mut out);
        let mut dec = RequestDecoder::default();
        let args = |r: Request| r.args.iter().map(|a| String::from_utf8(a.to_vec()).unwrap()).collect::<Vec<_>>();
        assert_eq!(args(dec.decode(&mut out).unwrap().unwrap()), ["SET", "key:000000000042", "xxxxx"]);
        assert_eq!(args(dec.decode(&mut out).unwrap().unwrap()), ["GET", "key:999999999999"]);
        assert!(out.is_empty());
    }

    #[test]
    fn uniform_keys_stay_in_range_and_reads_follow_the_ratio() {
        let mut g = Generator::new(7, 10, None, 0.25);
        let mut reads = 0;
        for _ in 0..10_000 {
            let (op, k) = g.next_request();
            assert!(k < 10);
            reads += usize::from(op == Op::Read);
        }
        assert!((2_000..3_000).contains(&reads), "{reads}");
        let mut w = Generator::new(7, 10, None, 0.0);
        assert!((0..1000).all(|_| w.next_request().0 == Op::Write));
    }

    #[test]
    fn zipf_favours_low_keys() {
        let z = Zipf::new(1000, 0.99);
        let mut rng = Rng::new(1);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[z.sample(&mut rng) as usize] += 1;
        }
        assert!(counts[0] > counts[10] && counts[10] > counts[500], "{:?}", &counts[..12]);
        assert!(counts[0] > 10_000, "the hottest key takes a large share: {}", counts[0]);
        assert_eq!(Zipf::new(1, 0.5).sample(&mut rng), 0);
    }

    #[test]
    fn distribution_flag_parses() {
        assert_eq!("uniform".parse::<KeyDistribution>(), Ok(KeyDistribution::Uniform));
        assert_eq!("zipf:0.99".parse::<KeyDistribution>(), Ok(KeyDistribution::Zipf(0.99)));
        assert!("zipf:1".parse::<KeyDistribution>().is_err());
        assert!("zipf:x".parse::<KeyDistribution>().is_err());
        assert!("normal".parse::<KeyDistribution>().is_err());
    }
}
