//! Walks every row of the recovery decision table (`skiff_wal::recovery`, and
//! docs/wal-format.md) on images built from a real WAL run and then damaged on
//! purpose, checking the decision and, for refusals, that the error names the file
//! and the offset.

use skiff_engine::{ConfState, Entry, HardState, SnapshotMeta};
use skiff_wal::format::{self, APPENDS_IN_FLIGHT_MAX, BLOCK_BYTES, BatchHeader, RecordRef, SegmentHeader};
use skiff_wal::recovery::{Recovered, classify_listing, recover_files};
use skiff_wal::{Append, Identity, SimFs, Wal, WalError};

use crate::common::{IDENT, Model, ent, run, sim_dir, small_opts};

type Files = Vec<(String, Vec<u8>)>;

/// A WAL run: 40 single-entry batches of about 3 KB (four 64 KiB segments and a
/// spare), with a new leader overwriting two entries along the way. With `compact`,
/// a snapshot at 20 releases the first segment.
fn base(compact: bool) -> (Files, Model) {
    run(async move {
        let fs = SimFs::new();
        let mut model = Model::default();
        let wal = Wal::open(fs.clone(), small_opts(&sim_dir())).await.unwrap();
        let mut term = 1;
        let mut next = 1;
        for k in 1..=40u64 {
            if k == 30 {
                term = 2;
                next -= 2;
            }
            let e = [ent(next, term, 3000)];
            next += 1;
            let hs = HardState { term, vote: 1, commit: next.saturating_sub(5) };
            let m = SnapshotMeta {
                index: 20,
                term: 1,
                conf_state: ConfState::with_voters([1, 2, 3]),
                election_timeout_ticks: 0,
            };
            let a = Append {
                entries: &e,
                hard_state: Some(hs),
                compact: (compact && k == 35).then_some(&m),
                must_sync: true,
                ..Default::default()
            };
            model.apply(&a);
            wal.submit(&a).await.unwrap();
            wal.next_completion().await.unwrap();
        }
        wal.close().await.unwrap();
        (fs.files_in(&sim_dir()), model)
    })
}

fn recover(files: &Files) -> Result<Recovered, WalError> {
    recover_files(&sim_dir(), IDENT, u64::MAX, files)
}

fn file(files: &mut Files, seq: u64) -> &mut Vec<u8> {
    let name = format::segment_name(seq);
    &mut files.iter_mut().find(|f| f.0 == name).expect("segment exists").1
}

fn segments(files: &Files) -> Vec<u64> {
    classify_listing(&sim_dir(), &files.iter().map(|f| f.0.clone()).collect::<Vec<_>>()).unwrap().segments
}

/// Offsets of the batches in a segment, in order.
fn batches(data: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut off = BLOCK_BYTES;
    while off < data.len() {
        match BatchHeader::decode(&data[off..]) {
            Some(h) => {
                out.push(off);
                off += h.padded_bytes();
            }
            None => break,
        }
    }
    out
}

fn expect_corruption(r: Result<Recovered, WalError>, seq: u64, offset: u64, row: &str) {
    match r {
        Err(WalError::Corruption { file, offset: o, reason }) => {
            assert!(file.ends_with(format::segment_name(seq)), "{row}: {file:?} ({reason})");
            assert_eq!(o, offset, "{row}: {reason}");
        }
        other => panic!("{row}: expected corruption in segment {seq} at {offset}, got {other:?}"),
    }
}

/// Appends a hand-made batch at the end of the last segment's data.
fn append_crafted(files: &mut Files, records: &[RecordRef<'_>]) -> (u64, usize) {
    let r = recover(files).unwrap();
    let tail = r.tail.unwrap();
    let mut buf = vec![0u8; format::batch_padded_bytes(records)];
    format::encode_batch(&mut buf, r.next_batch_seq, tail.segment_seq, records, &mut Vec::new());
    let f = file(files, tail.segment_seq);
    let off = tail.offset as usize;
    f[off..off + buf.len()].copy_from_slice(&buf);
    (tail.segment_seq, off)
}

#[test]
fn rows_b1_b2_e1_e5_r1_r3_clean_multi_segment_log() {
    let (files, model) = base(false);
    let segs = segments(&files);
    assert!(segs.len() >= 4, "{segs:?}");
    let r = recover(&files).unwrap();
    assert!(model.matches(&r), "B1/E1/R1/R3: the recovered log is the model");
    assert_eq!(r.last_index(), 38, "R1: entries 37 and 38 were superseded by term 2");
    assert_eq!(r.locs[36].term, 2);
    assert_eq!(r.torn_tail, None, "E5: clean end");
    assert_eq!(r.remove.len(), 1, "H4: the spare is removed");
}

#[test]
fn rows_d1_d2_listing() {
    let (mut files, _) = base(false);
    files.push((format::temp_name(99), vec![1; 10]));
    files.push((skiff_wal::fs::DIRECT_IO_PROBE_NAME.to_string(), vec![]));
    let l = classify_listing(&sim_dir(), &files.iter().map(|f| f.0.clone()).collect::<Vec<_>>()).unwrap();
    assert_eq!(l.leftovers.len(), 2, "D2");
    assert!(recover(&files).is_ok(), "D2: leftovers do not stop recovery");
    files.push(("junk.bin".into(), vec![]));
    let e = recover(&files).unwrap_err();
    assert!(matches!(e, WalError::BadDataDir { .. }) && e.to_string().contains("junk.bin"), "D1: {e}");
}

#[test]
fn rows_h1_h2_h3_operator_errors_and_name_mismatch() {
    let (files, _) = base(false);
    let last = *segments(&files).iter().rev().nth(1).unwrap();
    // H1
    let mut f1 = files.clone();
    let seg = file(&mut f1, last);
    seg[8..12].copy_from_slice(&7u32.to_le_bytes());
    let crc = crc32c::crc32c(&seg[0..64]);
    seg[64..68].copy_from_slice(&crc.to_le_bytes());
    assert!(recover(&f1).unwrap_err().to_string().contains("format version 7"), "H1");
    // H2
    let other = Identity { cluster_id: 9, ..IDENT };
    let e = recover_files(&sim_dir(), other, u64::MAX, &files).unwrap_err();
    assert!(e.to_string().contains("cluster 193") && e.to_string().contains("cluster 9"), "H2: {e}");
    // H3: segment 2's bytes under segment 3's name and the reverse.
    let mut f3 = files.clone();
    let two = file(&mut f3, 2).clone();
    let three = std::mem::replace(file(&mut f3, 3), two);
    *file(&mut f3, 2) = three;
    expect_corruption(recover(&f3), 2, 0, "H3");
}

#[test]
fn rows_h5_h5x_torn_activation_of_the_last_segment() {
    let (files, model) = base(false);
    let segs = segments(&files);
    let last = segs[segs.len() - 2];
    let n = batches(file(&mut files.clone(), last)).len() as u64;
    assert!(n >= APPENDS_IN_FLIGHT_MAX, "the last segment holds {n} batches");
    // H5x: damaged header but batches far past the in-flight window: acknowledged data.
    let mut f = files.clone();
    file(&mut f, last)[20] ^= 1;
    expect_corruption(recover(&f), last, 0, "H5x");
    // H5: damaged header and only a few batches: a first write cut short.
    let mut f = files.clone();
    let seg = file(&mut f, last);
    let offs = batches(seg);
    seg[offs[3]..].fill(0);
    seg[20] ^= 1;
    let r = recover(&f).unwrap();
    assert!(r.remove.contains(&last), "H5: the torn activation is removed");
    let prev_last = r.last_index();
    let mut want = model.clone();
    want.entries.truncate(prev_last as usize);
    assert_eq!(r.locs.len(), want.entries.len());
    assert!(r.tail.unwrap().segment_seq < last, "appending resumes in the previous segment");
    // H4 + H5x: a zeroed header looks like a spare, but a spare holds no batch of its
    // own past the in-flight window.
    let mut f = files.clone();
    file(&mut f, last)[..BLOCK_BYTES].fill(0);
    expect_corruption(recover(&f), last, 0, "H4/H5x: zeroed header of a written segment");
    // H4: a zeroed header with only a first write's worth of batches is a torn first
    // write, removed like H5.
    let mut f = files.clone();
    let seg = file(&mut f, last);
    let offs = batches(seg);
    seg[offs[3]..].fill(0);
    seg[..BLOCK_BYTES].fill(0);
    let r = recover(&f).unwrap();
    assert!(r.remove.contains(&last), "H4: the torn activation is removed");
    assert!(r.tail.unwrap().segment_seq < last);
}

/// A WAL that has written `n` single-entry batches, all in its first segment.
fn one_segment(n: u64) -> Files {
    run(async move {
        let fs = SimFs::new();
        let wal = Wal::open(fs.clone(), small_opts(&sim_dir())).await.unwrap();
        for i in 1..=n {
            let e = [ent(i, 1, 1000)];
            wal.submit(&Append { entries: &e, must_sync: true, ..Default::default() }).await.unwrap();
            wal.next_completion().await.unwrap();
        }
        wal.close().await.unwrap();
        fs.files_in(&sim_dir())
    })
}

/// `files` with the header of segment `seq` zeroed (`zero`) or damaged.
fn lose_header(files: &Files, seq: u64, zero: bool) -> Files {
    let mut f = files.clone();
    let seg = file(&mut f, seq);
    if zero {
        seg[..BLOCK_BYTES].fill(0);
    } else {
        seg[30] ^= 0x10;
    }
    f
}

#[test]
fn rows_h4_h5_h5x_when_no_segment_is_active() {
    let files = one_segment(12);
    let first = segments(&files)[0];
    assert_eq!(recover(&files).unwrap().last_index(), 12);
    assert_eq!(batches(file(&mut files.clone(), first)).len(), 12, "all in the first segment");
    // With no intact segment header anywhere, the first batch was batch 1: batches
    // from 9 on were written after it was durable, so the header was damaged later.
    for zero in [false, true] {
        expect_corruption(recover(&lose_header(&files, first, zero)), first, 0, "H5x with no active segment");
    }
    // A first write cut short: three batches in flight, header lost.
    let files = one_segment(3);
    for zero in [false, true] {
        let r = recover(&lose_header(&files, first, zero)).unwrap();
        assert_eq!(r.last_index(), 0, "H4/H5: nothing was acknowledged");
        assert!(r.remove.contains(&first));
    }
}

#[test]
fn rows_h6_h7_h8_f1_segment_sequence() {
    let (files, _) = base(false);
    // H6: zeroed header between active segments.
    let mut f = files.clone();
    file(&mut f, 2)[..BLOCK_BYTES].fill(0);
    expect_corruption(recover(&f), 2, 0, "H6");
    // H7: a missing middle segment.
    let mut f = files.clone();
    f.retain(|x| x.0 != format::segment_name(2));
    expect_corruption(recover(&f), 3, 0, "H7");
    // H8 then F1: a zeroed first segment is taken for a released one, but nothing
    // covers its entries, so recovery refuses.
    let mut f = files.clone();
    file(&mut f, 1)[..BLOCK_BYTES].fill(0);
    expect_corruption(recover(&f), 2, 0, "H8+F1");
    // H8 legitimately: compaction to 20 released segment 1 (entries 1 to 15), and a
    // crash caught its recycling after the header was zeroed, before the rename.
    let (mut f, model) = base(true);
    file(&mut f, 1)[..BLOCK_BYTES].fill(0);
    let r = recover(&f).unwrap();
    assert!(model.matches(&r), "H8: recovered without the released segment");
    assert!(r.remove.contains(&1));
    assert_eq!(r.snapshot.index, 20);
}

#[test]
fn rows_b3_e2_e3_e4_damaged_batches() {
    let (files, model) = base(false);
    let segs = segments(&files);
    let last = segs[segs.len() - 2];
    // E4 (B3): the last batch damaged: dropped as a torn tail, named by file and offset.
    let mut f = files.clone();
    let seg = file(&mut f, last);
    let offs = batches(seg);
    let at = *offs.last().unwrap();
    seg[at + 100] ^= 0xFF;
    let r = recover(&f).unwrap();
    assert_eq!(r.last_index(), model.last_index() - 1, "E4: only the last batch is lost");
    let t = r.torn_tail.unwrap();
    assert_eq!(t.offset as usize, at);
    assert!(t.file.ends_with(format::segment_name(last)));
    // E3: damage with more than the in-flight window of intact batches after it.
    let mut f = files.clone();
    let seg = file(&mut f, last);
    let at = offs[0];
    seg[at + 100] ^= 0xFF;
    expect_corruption(recover(&f), last, at as u64, "E3");
    // E2: the last batch of a middle segment damaged.
    let mut f = files.clone();
    let seg = file(&mut f, 2);
    let at = *batches(seg).last().unwrap();
    seg[at + 50] ^= 0xFF;
    expect_corruption(recover(&f), 2, at as u64, "E2");
}

/// B2 in a recycled segment, B3/E4 outside one: the block after the last batch holds
/// bytes that are no batch header (the middle of an older segment's batch, or a
/// write whose header block never landed).
#[test]
fn rows_b2_b3_e4_bytes_without_a_batch_header_after_the_data() {
    let (files, model) = base(false);
    let segs = segments(&files);
    let last = segs[segs.len() - 2];
    let end = recover(&files).unwrap().tail.unwrap().offset as usize;
    let mut f = files.clone();
    let seg = file(&mut f, last);
    assert!(end + BLOCK_BYTES <= seg.len(), "room after the data");
    seg[end..end + BLOCK_BYTES].fill(0xA5);
    let r = recover(&f).unwrap();
    let t = r.torn_tail.as_ref().expect("B3/E4: a fresh segment has nothing but zeroes after its data");
    assert_eq!(t.offset as usize, end);
    assert!(model.matches(&r), "E4: nothing acknowledged is lost");
    // The same bytes in a segment whose header says recycled: an older life's bytes.
    SegmentHeader::mark_recycled(&mut file(&mut f, last)[..BLOCK_BYTES]);
    let r = recover(&f).unwrap();
    assert_eq!(r.torn_tail, None, "B2: a recycled file's older bytes are no tear");
    assert!(model.matches(&r));
    assert_eq!(r.tail.unwrap().offset as usize, end, "appending resumes right after the data");
    // A batch of this segment's own with a damaged record, or a damaged header that
    // still has its magic, is a torn tail in a recycled file too.
    let at = *batches(file(&mut f, last)).last().unwrap();
    for damage in [at + 100, at + 12] {
        let mut g = f.clone();
        file(&mut g, last)[damage] ^= 0xFF;
        let r = recover(&g).unwrap();
        assert_eq!(r.torn_tail.as_ref().map(|t| t.offset as usize), Some(at), "E4 in a recycled segment ({damage})");
        assert_eq!(r.last_index(), model.last_index() - 1);
    }
    // Without its magic it reads as the older life's bytes: dropped alike, unreported.
    file(&mut f, last)[at] ^= 0xFF;
    let r = recover(&f).unwrap();
    assert_eq!((r.torn_tail.is_none(), r.last_index()), (true, model.last_index() - 1), "B2");
}

/// E6: the segment after the last one began its first write with batch `f` while the
/// last one's data ends before batch `e < f`. That write is issued only once every batch
/// before `f` is durable, so batches `e..f` were durable: refused, as E2 refuses a
/// middle segment ending early. With `f = e` (or no readable first batch) the damage
/// is a torn tail (E4), and the torn activation is removed.
#[test]
fn row_e6_the_next_segment_began_past_the_end_of_the_data() {
    let (files, _) = base(false);
    let segs = segments(&files);
    let (last, spare) = (segs[segs.len() - 2], segs[segs.len() - 1]);
    let clean = recover(&files).unwrap();
    let (end, next) = (clean.tail.unwrap().offset as usize, clean.next_batch_seq);
    // The spare's first write torn: its batch `f` landed at the data offset, its header
    // block did not (H4), or did in part (H5).
    let begun = |files: &Files, f: u64, header_landed: bool| {
        let mut g = files.clone();
        let records = [RecordRef::Entry(&ent(clean.last_index() + 1, 2, 100))];
        let mut buf = vec![0u8; format::batch_padded_bytes(&records)];
        format::encode_batch(&mut buf, f, spare, &records, &mut Vec::new());
        let seg = file(&mut g, spare);
        seg[BLOCK_BYTES..BLOCK_BYTES + buf.len()].copy_from_slice(&buf);
        if header_landed {
            seg[..64].fill(0x5A);
        }
        g
    };
    // The last batch damaged, and the spare began with the batch after it.
    let mut damaged = files.clone();
    let seg = file(&mut damaged, last);
    let at = *batches(seg).last().unwrap();
    seg[at + 100] ^= 0xFF;
    assert!(recover(&damaged).unwrap().torn_tail.is_some(), "E4 while the spare is untouched");
    for header_landed in [false, true] {
        expect_corruption(recover(&begun(&damaged, next, header_landed)), last, at as u64, "E6, damaged batch");
    }
    // Intact data, but the spare began one batch past its end: a durable batch is gone.
    expect_corruption(recover(&begun(&files, next + 1, false)), last, end as u64, "E6, missing batch");
    // Not E6: garbage after the intact data (a torn write of a batch that the next life
    // wrote again elsewhere) and the spare beginning with exactly the next batch.
    let mut g = files.clone();
    file(&mut g, last)[end..end + BLOCK_BYTES].fill(0xA5);
    let r = recover(&begun(&g, next, false)).unwrap();
    assert_eq!(r.torn_tail.as_ref().map(|t| t.offset as usize), Some(end), "E4");
    assert_eq!(r.last_index(), clean.last_index());
    assert!(r.remove.contains(&spare), "H4: the torn activation is removed");
    // Not E6: a damaged spare header with no readable first batch says nothing of `f`.
    let mut g = damaged.clone();
    file(&mut g, spare)[..64].fill(0x5A);
    let r = recover(&g).unwrap();
    assert_eq!(r.torn_tail.map(|t| t.offset as usize), Some(at), "E4 next to an H5 without its batch");
}

#[test]
fn rows_r2_r4_r5_r6_record_semantics() {
    let (files, model) = base(false);
    // R2: an intact batch whose entry leaves a gap.
    let mut f = files.clone();
    let gap = ent(model.last_index() + 2, 2, 10);
    let (seq, off) = append_crafted(&mut f, &[RecordRef::Entry(&gap)]);
    expect_corruption(recover(&f), seq, (off + format::BATCH_HEADER_BYTES) as u64, "R2");
    // R4: a snapshot marker beyond the last index.
    let mut f = files.clone();
    let m = SnapshotMeta { index: model.last_index() + 5, term: 2, ..Default::default() };
    append_crafted(&mut f, &[RecordRef::SnapshotMarker(&m, (m.index, m.term))]);
    assert!(recover(&f).unwrap_err().to_string().contains("beyond the last index"), "R4");
    // R4 within the log: compacts.
    let mut f = files.clone();
    let m = SnapshotMeta { index: 30, term: 1, ..Default::default() };
    append_crafted(&mut f, &[RecordRef::SnapshotMarker(&m, (m.index, m.term))]);
    let r = recover(&f).unwrap();
    assert_eq!((r.snapshot.index, r.locs.len() as u64), (30, model.last_index() - 30), "R4");
    // R4, type 5: a marker keeping a tail compacts to its point, below the snapshot.
    let mut f = files.clone();
    let m = SnapshotMeta { index: 30, term: 1, ..Default::default() };
    append_crafted(&mut f, &[RecordRef::SnapshotMarker(&m, (22, 1))]);
    let r = recover(&f).unwrap();
    assert_eq!((r.snapshot.index, r.compacted, r.last_index()), (30, (22, 1), model.last_index()), "R4 tail");
    // F1 with a tail: segment 1 (entries 1 to 15) is missing but the marker keeps the
    // log from 11; keeping it from 16 instead, the same files recover.
    let mut f = files.clone();
    append_crafted(&mut f, &[RecordRef::SnapshotMarker(&m, (10, 1))]);
    f.retain(|x| x.0 != format::segment_name(1));
    match recover(&f) {
        Err(e) => assert!(e.to_string().contains("earlier segments are missing"), "F1 tail: {e}"),
        Ok(r) => panic!("F1 tail: recovered a log from {} without entries 11 to 15", r.compacted.0 + 1),
    }
    let mut f = files.clone();
    append_crafted(&mut f, &[RecordRef::SnapshotMarker(&m, (15, 1))]);
    f.retain(|x| x.0 != format::segment_name(1));
    assert_eq!(recover(&f).map(|r| r.compacted).ok(), Some((15, 1)), "F1 tail: nothing missing");
    // R5: an install replaces everything.
    let mut f = files.clone();
    let m = SnapshotMeta { index: 500, term: 4, conf_state: ConfState::with_voters([2]), election_timeout_ticks: 3 };
    let after: Entry = ent(501, 4, 10);
    append_crafted(&mut f, &[RecordRef::SnapshotInstall(&m), RecordRef::Entry(&after)]);
    let r = recover(&f).unwrap();
    assert_eq!((r.snapshot.clone(), r.last_index()), (m, 501), "R5");
    assert_eq!(r.hard_state.commit, 500);
    // R6: a record with a valid checksum but an unknown type.
    let mut f = files.clone();
    let e = ent(model.last_index() + 1, 2, 10);
    let (seq, off) = append_crafted(&mut f, &[RecordRef::Entry(&e)]);
    let seg = file(&mut f, seq);
    let h = BatchHeader::decode(&seg[off..]).unwrap();
    let rec = off + format::BATCH_HEADER_BYTES;
    let len = format::RECORD_HEADER_BYTES + 10;
    seg[rec + 4] = 77;
    let crc = crc32c::crc32c_append(h.crc, &seg[rec + 4..rec + len]);
    seg[rec..rec + 4].copy_from_slice(&crc.to_le_bytes());
    expect_corruption(recover(&f), seq, rec as u64, "R6");
}
