//! The spool's files: an append-only log in numbered segment files.
//!
//! Every entry is framed as `[length u32][crc32 u32][kind u8][payload]`
//! (little endian; the length and the CRC cover kind and payload), so an
//! entry torn by a crash or a power loss is found when the log is opened,
//! counted and cut off, and never replayed as garbage.
//!
//! Three kinds of entries: a body as a source received it (with the sequence
//! number the log gave it, what its events need to be rebuilt with the same
//! ids, how many events it holds and which of them were duplicates dropped
//! on admission); a sink's cursor, which says that one sink acknowledged
//! every body below it; and the watermark, the least of the cursors: every
//! body below it was acknowledged by every sink. A segment whose bodies are
//! all below the watermark is deleted; each new segment starts with the
//! watermark and every cursor, so the newest ones are never lost with the
//! segments before it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::core::event::Source;

const HEADER: usize = 8;
/// A body as the first version wrote it: no event count, no skips.
const KIND_BODY_V1: u8 = 1;
const KIND_WATERMARK: u8 = 2;
const KIND_BODY: u8 = 3;
const KIND_CURSOR: u8 = 4;
/// Fixed part of a body entry after the kind: seq, source, received_at, id seed.
const BODY_FIXED: usize = 8 + 1 + 8 + 8;
/// What a body entry of `KIND_BODY` adds after that: events, skips.
const BODY_COUNTS: usize = 4 + 4;
const SUFFIX: &str = ".spool";

/// One body as its source received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub source: Source,
    pub received_at: SystemTime,
    /// What the events' ids are derived from, so a replay rebuilds the same ids.
    pub id_seed: u64,
    /// How many events the body held when it was admitted (0 when the
    /// version that wrote it did not say).
    pub events: u32,
    /// The indices of its events that were dropped as duplicates when it
    /// was admitted, ascending: a replay leaves them out.
    pub skips: Box<[u32]>,
    pub body: Bytes,
}

/// A body waiting for its sequence number: what a source hands the writer.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub source: Source,
    pub received_at: SystemTime,
    pub id_seed: u64,
    pub events: u32,
    pub skips: Box<[u32]>,
    pub body: Bytes,
}

impl NewRecord {
    /// Bytes the entry takes on disk.
    pub fn entry_len(&self) -> u64 {
        (HEADER + 1 + BODY_FIXED + BODY_COUNTS + 4 * self.skips.len() + self.body.len()) as u64
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Body(Record),
    /// Every body with a smaller sequence number is acknowledged by every sink.
    Watermark(u64),
    /// Every body with a smaller sequence number is acknowledged by the sink
    /// of this name.
    Cursor(String, u64),
}

fn source_code(source: Source) -> u8 {
    match source {
        Source::Webhook => 1,
        Source::Notifier => 2,
        Source::Reconciled => 3,
        Source::Decode => 4,
    }
}

fn source_of(code: u8) -> Option<Source> {
    Some(match code {
        1 => Source::Webhook,
        2 => Source::Notifier,
        3 => Source::Reconciled,
        4 => Source::Decode,
        _ => return None,
    })
}

fn nanos(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn frame(out: &mut Vec<u8>, payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    payload(out);
    let content = &out[start + HEADER..];
    let length = u32::try_from(content.len()).expect("an entry is smaller than 4 GiB");
    let crc = crc32fast::hash(content);
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Appends `entry`, framed, to `out`.
pub fn encode(entry: &Entry, out: &mut Vec<u8>) {
    match entry {
        Entry::Body(record) => frame(out, |out| {
            out.push(KIND_BODY);
            out.extend_from_slice(&record.seq.to_le_bytes());
            out.push(source_code(record.source));
            out.extend_from_slice(&nanos(record.received_at).to_le_bytes());
            out.extend_from_slice(&record.id_seed.to_le_bytes());
            out.extend_from_slice(&record.events.to_le_bytes());
            let skips = u32::try_from(record.skips.len()).expect("fewer skips than events");
            out.extend_from_slice(&skips.to_le_bytes());
            for skip in &record.skips {
                out.extend_from_slice(&skip.to_le_bytes());
            }
            out.extend_from_slice(&record.body);
        }),
        Entry::Watermark(seq) => frame(out, |out| {
            out.push(KIND_WATERMARK);
            out.extend_from_slice(&seq.to_le_bytes());
        }),
        Entry::Cursor(sink, seq) => frame(out, |out| {
            out.push(KIND_CURSOR);
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(sink.as_bytes());
        }),
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

/// The entry in `content` (kind and payload, CRC already checked), or None
/// when this version cannot read it.
fn parse(content: Vec<u8>) -> Option<Entry> {
    let kind = *content.first()?;
    match kind {
        KIND_BODY | KIND_BODY_V1 if content.len() > BODY_FIXED => {
            let mut body = Bytes::from(content);
            let fixed = body.split_to(1 + BODY_FIXED);
            let (events, skips) = if kind == KIND_BODY {
                if body.len() < BODY_COUNTS {
                    return None;
                }
                let counts = body.split_to(BODY_COUNTS);
                let skips = u32_at(&counts, 4) as usize;
                if body.len() < skips.checked_mul(4)? {
                    return None;
                }
                let list = body.split_to(4 * skips);
                let skips = (0..skips).map(|i| u32_at(&list, 4 * i)).collect();
                (u32_at(&counts, 0), skips)
            } else {
                (0, Box::default())
            };
            Some(Entry::Body(Record {
                seq: u64_at(&fixed, 1),
                source: source_of(fixed[9])?,
                received_at: SystemTime::UNIX_EPOCH + Duration::from_nanos(u64_at(&fixed, 10)),
                id_seed: u64_at(&fixed, 18),
                events,
                skips,
                body,
            }))
        }
        KIND_WATERMARK if content.len() == 9 => Some(Entry::Watermark(u64_at(&content, 1))),
        KIND_CURSOR if content.len() > 9 => Some(Entry::Cursor(
            String::from_utf8(content[9..].to_vec()).ok()?,
            u64_at(&content, 1),
        )),
        _ => None,
    }
}

/// What reading the next entry found.
#[derive(Debug)]
pub enum Next {
    Entry(Entry),
    /// An entry whose CRC holds but that this version cannot read; skipped.
    Unreadable,
    /// Nothing more before the limit.
    End,
    /// A short or corrupt entry at `offset`: everything from there on is
    /// unusable, since the framing is lost.
    Torn {
        offset: u64,
    },
}

/// Reads one segment's entries from an offset up to a limit.
pub struct SegmentReader {
    file: BufReader<File>,
    offset: u64,
}

impl SegmentReader {
    pub fn open(path: &Path, offset: u64) -> io::Result<SegmentReader> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(SegmentReader {
            file: BufReader::with_capacity(64 * 1024, file),
            offset,
        })
    }

    /// The next entry that ends at or before `limit` bytes into the file.
    pub fn next(&mut self, limit: u64) -> io::Result<Next> {
        if self.offset >= limit {
            return Ok(Next::End);
        }
        let torn = Next::Torn {
            offset: self.offset,
        };
        if limit - self.offset < HEADER as u64 {
            return Ok(torn);
        }
        let mut header = [0u8; HEADER];
        self.file.read_exact(&mut header)?;
        let length = u64::from(u32::from_le_bytes(header[..4].try_into().expect("4")));
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4"));
        // A torn length can claim anything: never allocate past the file.
        if length == 0 || length > limit - self.offset - HEADER as u64 {
            return Ok(torn);
        }
        let mut content = vec![0u8; length as usize];
        self.file.read_exact(&mut content)?;
        if crc32fast::hash(&content) != crc {
            return Ok(torn);
        }
        self.offset += HEADER as u64 + length;
        Ok(match parse(content) {
            Some(entry) => Next::Entry(entry),
            None => Next::Unreadable,
        })
    }
}

pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}{SUFFIX}"))
}

/// The segment ids in `dir`, oldest first.
pub fn segment_ids(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name.strip_suffix(SUFFIX).and_then(|s| s.parse().ok()) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// A segment as the log knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub id: u64,
    pub len: u64,
    /// The highest sequence number of a body in it.
    pub max_seq: Option<u64>,
}

/// A body in the log not yet acknowledged by every sink, as recovery found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub seq: u64,
    /// 0 when the version that wrote it did not say.
    pub events: u32,
    pub bytes: u64,
    pub received_at: SystemTime,
}

/// What opening the log found.
#[derive(Debug)]
pub struct Recovered {
    /// Oldest first; the last one is where appends go on.
    pub segments: Vec<Segment>,
    pub watermark: u64,
    /// Each sink's cursor, by the sink's name, as last recorded.
    pub cursors: BTreeMap<String, u64>,
    pub next_seq: u64,
    /// Bodies at or above the watermark, in order: to be replayed.
    pub held: Vec<Held>,
    /// Entries cut off as torn (at most one per segment) or unreadable.
    pub torn: u64,
}

impl Recovered {
    /// Bodies at or above the watermark.
    pub fn pending(&self) -> u64 {
        self.held.len() as u64
    }
}

/// Scans the log in `dir`: cuts a torn tail off the newest segment (so
/// appends go on after the last whole entry), deletes segments that hold
/// nothing to replay, and reports what is left.
pub fn recover(dir: &Path) -> io::Result<Recovered> {
    let ids = segment_ids(dir)?;
    let mut segments = Vec::new();
    let mut watermark = 0;
    let mut cursors = BTreeMap::new();
    let mut next_seq = 0;
    let mut torn = 0;
    let mut held = Vec::new();
    for (index, &id) in ids.iter().enumerate() {
        let path = segment_path(dir, id);
        let len = std::fs::metadata(&path)?.len();
        let mut reader = SegmentReader::open(&path, 0)?;
        let mut max_seq = None;
        let end = loop {
            let at = reader.offset;
            match reader.next(len)? {
                Next::Entry(Entry::Body(record)) => {
                    max_seq = Some(record.seq);
                    next_seq = next_seq.max(record.seq.saturating_add(1));
                    held.push(Held {
                        seq: record.seq,
                        events: record.events,
                        bytes: reader.offset - at,
                        received_at: record.received_at,
                    });
                }
                Next::Entry(Entry::Watermark(seq)) => watermark = watermark.max(seq),
                Next::Entry(Entry::Cursor(sink, seq)) => {
                    let cursor = cursors.entry(sink).or_insert(seq);
                    *cursor = (*cursor).max(seq);
                }
                Next::Unreadable => torn += 1,
                Next::End => break len,
                Next::Torn { offset } => {
                    torn += 1;
                    break offset;
                }
            }
        };
        if end < len && index + 1 == ids.len() {
            let file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(end)?;
            file.sync_all()?;
        }
        segments.push(Segment {
            id,
            len: end,
            max_seq,
        });
    }
    // Everything before the newest segment that holds no body to replay.
    let keep_from = segments
        .iter()
        .position(|s| s.max_seq.is_some_and(|seq| seq >= watermark))
        .unwrap_or(segments.len().saturating_sub(1));
    for segment in segments.drain(..keep_from) {
        std::fs::remove_file(segment_path(dir, segment.id))?;
    }
    held.retain(|h| h.seq >= watermark);
    for cursor in cursors.values_mut() {
        *cursor = (*cursor).max(watermark);
    }
    Ok(Recovered {
        segments,
        watermark,
        cursors,
        next_seq: next_seq.max(watermark),
        held,
        torn,
    })
}

/// Where the durable part of the log ends: readers read up to here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// A file operation of the writer that a test can make fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    /// Creating the next segment, after its file exists.
    Roll,
    /// Writing appended bodies.
    Write,
    /// Syncing them.
    Sync,
}

/// Failures armed for the writer's next operations of a kind, so that
/// tests (and the model of the delivery core) can see what a failing disk
/// does to the log. A clone shares them; the default fails nothing.
#[derive(Debug, Clone, Default)]
pub struct Faults(std::sync::Arc<std::sync::Mutex<Vec<FileOp>>>);

impl Faults {
    /// The next `op` fails once.
    pub fn fail_next(&self, op: FileOp) {
        self.0.lock().expect("never poisoned").push(op);
    }

    fn check(&self, op: FileOp) -> io::Result<()> {
        let mut armed = self.0.lock().expect("never poisoned");
        match armed.iter().position(|o| *o == op) {
            Some(at) => {
                armed.remove(at);
                Err(io::Error::other(format!("injected failure of {op:?}")))
            }
            None => Ok(()),
        }
    }
}

/// The appending end of the log. Used from one thread.
pub struct Writer {
    dir: PathBuf,
    file: File,
    current: Segment,
    /// Segments before the current one, not yet deleted.
    closed: Vec<Segment>,
    next_seq: u64,
    watermark: u64,
    cursors: BTreeMap<String, u64>,
    segment_bytes: u64,
    fsync: bool,
    scratch: Vec<u8>,
    faults: Faults,
}

impl Writer {
    /// Continues the log `recover` left in `dir` (or starts one), keeping
    /// the cursors of `recovered` (a caller may have changed them to the
    /// sinks it has).
    pub fn open(
        dir: &Path,
        recovered: &Recovered,
        segment_bytes: u64,
        fsync: bool,
    ) -> io::Result<Writer> {
        let mut closed = recovered.segments.clone();
        let (file, current) = match closed.pop() {
            Some(current) => (
                OpenOptions::new()
                    .append(true)
                    .open(segment_path(dir, current.id))?,
                current,
            ),
            None => Self::create(
                dir,
                0,
                recovered.watermark,
                &recovered.cursors,
                &Faults::default(),
            )?,
        };
        Ok(Writer {
            dir: dir.to_owned(),
            file,
            current,
            closed,
            next_seq: recovered.next_seq,
            watermark: recovered.watermark,
            cursors: recovered.cursors.clone(),
            segment_bytes: segment_bytes.max(1),
            fsync,
            scratch: Vec::new(),
            faults: Faults::default(),
        })
    }

    /// The writer with `faults` armed by a test.
    pub fn with_faults(self, faults: Faults) -> Writer {
        Writer { faults, ..self }
    }

    /// A new segment that starts with the current watermark and cursors,
    /// its directory entry synced so that the file outlives a power loss.
    fn create(
        dir: &Path,
        id: u64,
        watermark: u64,
        cursors: &BTreeMap<String, u64>,
        faults: &Faults,
    ) -> io::Result<(File, Segment)> {
        let path = segment_path(dir, id);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        let mut head = Vec::new();
        encode(&Entry::Watermark(watermark), &mut head);
        for (sink, seq) in cursors {
            encode(&Entry::Cursor(sink.clone(), *seq), &mut head);
        }
        let written = faults
            .check(FileOp::Roll)
            .and_then(|()| file.write_all(&head))
            .and_then(|()| file.sync_all())
            .and_then(|()| File::open(dir)?.sync_all());
        if let Err(error) = written {
            // A half-made segment would stand in the way of every later
            // roll (`create_new`): the next append tries again from scratch.
            let _ = std::fs::remove_file(&path);
            return Err(error);
        }
        Ok((
            file,
            Segment {
                id,
                len: head.len() as u64,
                max_seq: None,
            },
        ))
    }

    pub fn position(&self) -> Position {
        Position {
            segment: self.current.id,
            offset: self.current.len,
        }
    }

    /// Bytes of every segment still on disk.
    pub fn bytes(&self) -> u64 {
        self.closed.iter().map(|s| s.len).sum::<u64>() + self.current.len
    }

    /// Appends `records` as bodies with the next sequence numbers, synced
    /// when `fsync` is on. On error nothing of them is in the log.
    pub fn append(&mut self, records: &[NewRecord]) -> io::Result<()> {
        if self.current.max_seq.is_some() && self.current.len >= self.segment_bytes {
            self.roll()?;
        }
        self.scratch.clear();
        let mut seq = self.next_seq;
        for record in records {
            encode(
                &Entry::Body(Record {
                    seq,
                    source: record.source,
                    received_at: record.received_at,
                    id_seed: record.id_seed,
                    events: record.events,
                    skips: record.skips.clone(),
                    body: record.body.clone(),
                }),
                &mut self.scratch,
            );
            seq = seq.saturating_add(1);
        }
        let written = self.faults.check(FileOp::Write).and_then(|()| {
            self.file.write_all(&self.scratch)?;
            if self.fsync {
                self.faults.check(FileOp::Sync)?;
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(error) = written {
            // Cut off whatever part reached the file, so the next append
            // follows a whole entry.
            let _ = self.file.set_len(self.current.len);
            return Err(error);
        }
        self.current.len += self.scratch.len() as u64;
        if !records.is_empty() {
            self.current.max_seq = Some(seq - 1);
        }
        self.next_seq = seq;
        Ok(())
    }

    fn roll(&mut self) -> io::Result<()> {
        self.file.sync_all()?;
        let (file, segment) = Self::create(
            &self.dir,
            self.current.id + 1,
            self.watermark,
            &self.cursors,
            &self.faults,
        )?;
        self.file = file;
        self.closed
            .push(std::mem::replace(&mut self.current, segment));
        Ok(())
    }

    /// Records that every body below `seq` is acknowledged, and deletes the
    /// closed segments that hold nothing else. Returns the bytes freed.
    pub fn watermark(&mut self, seq: u64) -> io::Result<u64> {
        if seq <= self.watermark {
            return Ok(0);
        }
        self.scratch.clear();
        encode(&Entry::Watermark(seq), &mut self.scratch);
        self.write_entry()?;
        self.watermark = seq;
        let mut freed = 0;
        while let Some(oldest) = self.closed.first() {
            if oldest.max_seq.is_some_and(|max| max >= seq) {
                break;
            }
            std::fs::remove_file(segment_path(&self.dir, oldest.id))?;
            freed += oldest.len;
            self.closed.remove(0);
        }
        Ok(freed)
    }

    /// Records that the sink `sink` acknowledged every body below `seq`.
    pub fn cursor(&mut self, sink: &str, seq: u64) -> io::Result<()> {
        if self.cursors.get(sink).is_some_and(|cursor| *cursor >= seq) {
            return Ok(());
        }
        self.scratch.clear();
        encode(&Entry::Cursor(sink.to_owned(), seq), &mut self.scratch);
        self.write_entry()?;
        self.cursors.insert(sink.to_owned(), seq);
        Ok(())
    }

    /// Writes the entry in `scratch` (not synced: what it records is
    /// written again if lost). On error, whatever part reached the file is
    /// cut off, so the next append follows a whole entry.
    fn write_entry(&mut self) -> io::Result<()> {
        if let Err(error) = self.file.write_all(&self.scratch) {
            let _ = self.file.set_len(self.current.len);
            return Err(error);
        }
        self.current.len += self.scratch.len() as u64;
        Ok(())
    }

    /// The sequence number the next body appended gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bodies in the log not known to be acknowledged.
    pub fn pending(&self) -> u64 {
        self.next_seq.saturating_sub(self.watermark)
    }

    /// Syncs what was written.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(body: &[u8]) -> NewRecord {
        NewRecord {
            source: Source::Webhook,
            received_at: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_764_000_000_123_456_789),
            id_seed: 42,
            events: 1,
            skips: Box::default(),
            body: Bytes::copy_from_slice(body),
        }
    }

    fn bodies(dir: &Path) -> Vec<(u64, Vec<u8>)> {
        let recovered = recover(dir).unwrap();
        let mut out = Vec::new();
        for segment in &recovered.segments {
            let mut reader = SegmentReader::open(&segment_path(dir, segment.id), 0).unwrap();
            while let Next::Entry(entry) = reader.next(segment.len).unwrap() {
                if let Entry::Body(record) = entry {
                    if record.seq >= recovered.watermark {
                        out.push((record.seq, record.body.to_vec()));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn an_entry_reads_back_as_written() {
        let entry = Entry::Body(Record {
            seq: 7,
            source: Source::Notifier,
            received_at: record(b"").received_at,
            id_seed: u64::MAX,
            events: 3,
            skips: Box::new([0, 2]),
            body: Bytes::from_static(b"\x0a\x03abc"),
        });
        let cursor = Entry::Cursor("kafka-main".into(), 12);
        let mut bytes = Vec::new();
        encode(&entry, &mut bytes);
        encode(&cursor, &mut bytes);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, &bytes).unwrap();
        let mut reader = SegmentReader::open(&path, 0).unwrap();
        match reader.next(bytes.len() as u64).unwrap() {
            Next::Entry(read) => assert_eq!(read, entry),
            other => panic!("{other:?}"),
        }
        match reader.next(bytes.len() as u64).unwrap() {
            Next::Entry(read) => assert_eq!(read, cursor),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            reader.next(bytes.len() as u64).unwrap(),
            Next::End
        ));
    }

    #[test]
    fn a_write_torn_at_any_byte_is_cut_off_and_the_whole_entries_kept() {
        let dir = tempfile::tempdir().unwrap();
        let recovered = recover(dir.path()).unwrap();
        let mut writer = Writer::open(dir.path(), &recovered, 1 << 20, true).unwrap();
        writer
            .append(&[record(b"first"), record(b"second")])
            .unwrap();
        let whole = writer.current.len;
        writer.append(&[record(b"third, torn")]).unwrap();
        let full = writer.current.len;
        drop(writer);
        let path = segment_path(dir.path(), 0);
        let bytes = std::fs::read(&path).unwrap();
        for cut in whole..full {
            std::fs::write(&path, &bytes[..cut as usize]).unwrap();
            let recovered = recover(dir.path()).unwrap();
            assert_eq!(recovered.torn, u64::from(cut > whole), "cut at {cut}");
            assert_eq!(recovered.next_seq, 2);
            assert_eq!(
                bodies(dir.path()),
                [(0, b"first".to_vec()), (1, b"second".to_vec())]
            );
            assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        }
        // A flipped bit in the last entry is torn too; appends go on after it.
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        let recovered = recover(dir.path()).unwrap();
        assert_eq!(recovered.torn, 1);
        let mut writer = Writer::open(dir.path(), &recovered, 1 << 20, true).unwrap();
        writer.append(&[record(b"after")]).unwrap();
        drop(writer);
        assert_eq!(
            bodies(dir.path()),
            [
                (0, b"first".to_vec()),
                (1, b"second".to_vec()),
                (2, b"after".to_vec())
            ]
        );
    }

    /// A roll that fails after the next segment's file exists (a full disk
    /// while its head is written) must not stop every later append.
    #[test]
    fn a_failed_roll_leaves_the_log_usable() {
        let dir = tempfile::tempdir().unwrap();
        let recovered = recover(dir.path()).unwrap();
        let faults = Faults::default();
        // Tiny segments: every append after the first rolls to a new one.
        let mut writer = Writer::open(dir.path(), &recovered, 1, true)
            .unwrap()
            .with_faults(faults.clone());
        writer.append(&[record(b"a")]).unwrap();
        faults.fail_next(FileOp::Roll);
        assert!(writer.append(&[record(b"b")]).is_err());
        writer.append(&[record(b"c")]).unwrap();
        writer.append(&[record(b"d")]).unwrap();
        // A failed write or sync leaves it usable too.
        faults.fail_next(FileOp::Write);
        assert!(writer.append(&[record(b"e")]).is_err());
        faults.fail_next(FileOp::Sync);
        assert!(writer.append(&[record(b"f")]).is_err());
        writer.append(&[record(b"g")]).unwrap();
        drop(writer);
        assert_eq!(
            bodies(dir.path()),
            [
                (0, b"a".to_vec()),
                (1, b"c".to_vec()),
                (2, b"d".to_vec()),
                (3, b"g".to_vec())
            ]
        );
    }

    #[test]
    fn acknowledged_segments_are_deleted_and_the_watermark_survives() {
        let dir = tempfile::tempdir().unwrap();
        let recovered = recover(dir.path()).unwrap();
        // Tiny segments: every append after the first rolls to a new one.
        let mut writer = Writer::open(dir.path(), &recovered, 1, true).unwrap();
        for i in 0..5u8 {
            writer.append(&[record(&[i])]).unwrap();
        }
        assert_eq!(segment_ids(dir.path()).unwrap().len(), 5);
        let before = writer.bytes();
        let freed = writer.watermark(3).unwrap();
        assert!(freed > 0);
        assert_eq!(writer.bytes(), before - freed + 17);
        assert_eq!(segment_ids(dir.path()).unwrap().len(), 2);
        drop(writer);
        let recovered = recover(dir.path()).unwrap();
        assert_eq!(recovered.watermark, 3);
        assert_eq!(recovered.pending(), 2);
        assert_eq!(recovered.next_seq, 5);
        assert_eq!(bodies(dir.path()), [(3, vec![3]), (4, vec![4])]);
    }

    #[test]
    fn each_sinks_cursor_survives_the_segments_it_was_written_in() {
        let dir = tempfile::tempdir().unwrap();
        let recovered = recover(dir.path()).unwrap();
        let mut writer = Writer::open(dir.path(), &recovered, 1, true).unwrap();
        for i in 0..4u8 {
            writer.append(&[record(&[i])]).unwrap();
        }
        writer.cursor("fast", 4).unwrap();
        writer.cursor("slow", 1).unwrap();
        // An older cursor never moves one back.
        writer.cursor("fast", 2).unwrap();
        writer.watermark(1).unwrap();
        // The next segment starts with both cursors; the old ones go.
        writer.append(&[record(&[4])]).unwrap();
        writer.cursor("slow", 2).unwrap();
        writer.watermark(2).unwrap();
        drop(writer);
        let recovered = recover(dir.path()).unwrap();
        assert_eq!(recovered.watermark, 2);
        assert_eq!(
            recovered.cursors,
            BTreeMap::from([("fast".to_owned(), 4), ("slow".to_owned(), 2)])
        );
        assert_eq!(
            recovered.held.iter().map(|h| h.seq).collect::<Vec<_>>(),
            [2, 3, 4]
        );
        assert!(recovered.held.iter().all(|h| h.events == 1 && h.bytes > 0));
    }
}
