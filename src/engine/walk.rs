//! Listing many model folders with few requests. S3 lists keys in UTF-8 binary order, so the
//! folders of a sweep, sorted, can be read as one stream under their common root: each request
//! starts (`start-after`) at the next key still needed, skipping the gaps between folders (kept
//! runs, other artifacts). That is never more requests than listing each folder on its own, and
//! for an experiment's run folders it is about one request per 1,000 keys instead of one per
//! folder. Pure logic: the engine sends the requests.
//!
//! A key is taken only if it starts with a folder's prefix, so the gaps are never deleted; the
//! store module checks that every page is in order, which the folder bookkeeping relies on.

use super::run_index::RunIndex;
use crate::domain::location::ModelLocation;
use crate::store::{ObjectInfo, common_folder};

/// One folder to empty, and the run it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Folder {
    prefix: String,
    run: RunIndex,
}

/// The next request of a walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Request<'w> {
    pub bucket: &'w str,
    /// The common root of the walk's folders; never empty.
    pub prefix: &'w str,
    pub start_after: Option<&'w str>,
}

/// What one page brought.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Step {
    /// Keys taken, by run, in page order.
    pub taken: Vec<(RunIndex, Vec<ObjectInfo>)>,
    /// Runs one of whose folders is now fully listed (a run appears once per folder).
    pub finished: Vec<RunIndex>,
}

/// A walk over sorted folders of one bucket sharing a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ListingWalk {
    bucket: String,
    root: String,
    folders: Vec<Folder>,
    /// The first folder not fully listed.
    next: usize,
    /// The last key seen.
    last: Option<String>,
}

impl ListingWalk {
    /// The next request; `None` once every folder is listed.
    pub(super) fn request(&self) -> Option<Request<'_>> {
        let folder = self.folders.get(self.next)?;
        // Every key under `a/b/` sorts after `a/b`: start just before the folder.
        let before = &folder.prefix[..folder.prefix.len() - last_char_len(&folder.prefix)];
        let start_after = match self.last.as_deref() {
            Some(last) if last > before => Some(last),
            _ => (!before.is_empty()).then_some(before),
        };
        Some(Request {
            bucket: &self.bucket,
            prefix: &self.root,
            start_after,
        })
    }

    /// The bucket of every folder of the walk.
    pub(super) fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The run of the folder being listed, for error messages.
    pub(super) fn current_run(&self) -> Option<RunIndex> {
        self.folders.get(self.next).map(|f| f.run)
    }

    /// Takes the keys of one page (in order, all after the request's `start_after`); `more`
    /// says whether the store has further keys under the root.
    pub(super) fn page(&mut self, objects: Vec<ObjectInfo>, more: bool) -> Step {
        let mut step = Step::default();
        for object in objects {
            while let Some(folder) = self.folders.get(self.next)
                && object.key.as_str() > folder.prefix.as_str()
                && !object.key.starts_with(&folder.prefix)
            {
                step.finished.push(folder.run);
                self.next += 1;
            }
            let Some(folder) = self.folders.get(self.next) else {
                break;
            };
            self.last = Some(object.key.clone());
            if object.key.starts_with(&folder.prefix) {
                match step.taken.last_mut() {
                    Some((run, objects)) if *run == folder.run => objects.push(object),
                    _ => step.taken.push((folder.run, vec![object])),
                }
            }
        }
        if !more {
            step.finished
                .extend(self.folders[self.next..].iter().map(|f| f.run));
            self.next = self.folders.len();
        }
        step
    }
}

/// Groups the folders to empty into walks: folders of one bucket under the same first path
/// segment share a walk, split into up to `width` walks that can run side by side. A folder
/// inside (or equal to) another gets a walk of its own, so each key belongs to one folder.
pub(super) fn plan<'a>(
    locations: impl IntoIterator<Item = (RunIndex, &'a ModelLocation)>,
    width: usize,
) -> Vec<ListingWalk> {
    let mut folders: Vec<(&str, Folder)> = locations
        .into_iter()
        .map(|(run, location)| {
            let folder = Folder {
                prefix: location.prefix.clone(),
                run,
            };
            (location.bucket.as_str(), folder)
        })
        .collect();
    folders.sort_by(|(a, x), (b, y)| (a, &x.prefix, x.run).cmp(&(b, &y.prefix, y.run)));

    let mut groups: Vec<(&str, Vec<Folder>)> = Vec::new();
    let mut alone = Vec::new();
    for (bucket, folder) in folders {
        match groups.last_mut() {
            Some((b, group))
                if *b == bucket
                    && first_segment(&group[0].prefix) == first_segment(&folder.prefix) =>
            {
                let previous = &group[group.len() - 1].prefix;
                if folder.prefix.starts_with(previous.as_str()) {
                    alone.push(walk(bucket, vec![folder]));
                } else {
                    group.push(folder);
                }
            }
            _ => groups.push((bucket, vec![folder])),
        }
    }
    let mut walks = Vec::new();
    for (bucket, group) in groups {
        let size = group.len().div_ceil(width.max(1));
        walks.extend(group.chunks(size).map(|chunk| walk(bucket, chunk.to_vec())));
    }
    walks.extend(alone);
    walks
}

fn walk(bucket: &str, folders: Vec<Folder>) -> ListingWalk {
    let root = common_root(&folders);
    ListingWalk {
        bucket: bucket.to_owned(),
        root,
        folders,
        next: 0,
        last: None,
    }
}

/// The deepest folder holding every prefix, or the first folder's own prefix when they share
/// none (never empty: folders are never empty).
fn common_root(folders: &[Folder]) -> String {
    match common_folder(folders.iter().map(|f| f.prefix.as_str())) {
        "" => folders[0].prefix.clone(),
        root => root.to_owned(),
    }
}

fn first_segment(prefix: &str) -> &str {
    prefix.split_inclusive('/').next().unwrap_or(prefix)
}

fn last_char_len(text: &str) -> usize {
    text.chars().next_back().map_or(0, char::len_utf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::size::Bytes;

    fn loc(bucket: &str, prefix: &str) -> ModelLocation {
        ModelLocation {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        }
    }

    fn objects(keys: &[&str]) -> Vec<ObjectInfo> {
        keys.iter()
            .map(|k| ObjectInfo {
                key: (*k).to_owned(),
                size: Bytes(1),
            })
            .collect()
    }

    fn finished(step: &Step) -> Vec<usize> {
        step.finished.iter().map(|r| r.get()).collect()
    }

    fn taken(step: &Step) -> Vec<(usize, Vec<&str>)> {
        step.taken
            .iter()
            .map(|(run, objects)| (run.get(), objects.iter().map(|o| o.key.as_str()).collect()))
            .collect()
    }

    fn one_walk(prefixes: &[&str]) -> ListingWalk {
        let locations: Vec<ModelLocation> = prefixes.iter().map(|p| loc("mlflow", p)).collect();
        let mut walks = plan(
            locations
                .iter()
                .enumerate()
                .map(|(at, l)| (RunIndex::new(at), l)),
            1,
        );
        assert_eq!(walks.len(), 1);
        walks.remove(0)
    }

    fn request(walk: &ListingWalk) -> Option<(&str, Option<&str>)> {
        walk.request().map(|r| (r.prefix, r.start_after))
    }

    #[test]
    fn one_stream_takes_each_folders_keys_and_skips_the_gaps() {
        // Runs 0 and 1 are to delete; "1/b/" is a kept run between them.
        let mut walk = one_walk(&["1/a/artifacts/model/", "1/c/artifacts/model/"]);
        assert_eq!(request(&walk), Some(("1/", Some("1/a/artifacts/model"))));
        let step = walk.page(
            objects(&[
                "1/a/artifacts/model/f1",
                "1/a/artifacts/model/f2",
                "1/a/artifacts/plot.png",
                "1/b/artifacts/model/f1",
                "1/c/artifacts/model/f1",
            ]),
            true,
        );
        assert_eq!(
            taken(&step),
            [
                (0, vec!["1/a/artifacts/model/f1", "1/a/artifacts/model/f2"]),
                (1, vec!["1/c/artifacts/model/f1"]),
            ]
        );
        assert_eq!(finished(&step), [0]);
        assert_eq!(
            request(&walk),
            Some(("1/", Some("1/c/artifacts/model/f1"))),
            "inside a folder: carry on after the last key"
        );
        let step = walk.page(objects(&["1/c/artifacts/model/f2", "1/d/x"]), true);
        assert_eq!(taken(&step), [(1, vec!["1/c/artifacts/model/f2"])]);
        assert_eq!(
            finished(&step),
            [1],
            "a key past the last folder ends the walk"
        );
        assert_eq!(request(&walk), None);
    }

    #[test]
    fn a_page_ending_in_a_gap_jumps_to_the_next_folder() {
        let mut walk = one_walk(&["1/a/m/", "1/z/m/"]);
        let step = walk.page(objects(&["1/a/m/f", "1/b/m/f", "1/c/m/f"]), true);
        assert_eq!(taken(&step), [(0, vec!["1/a/m/f"])]);
        assert_eq!(finished(&step), [0]);
        assert_eq!(request(&walk), Some(("1/", Some("1/z/m"))));
    }

    #[test]
    fn the_last_page_finishes_every_folder_left() {
        let mut walk = one_walk(&["1/a/m/", "1/b/m/", "1/c/m/"]);
        let step = walk.page(objects(&["1/a/m/f"]), false);
        assert_eq!(taken(&step), [(0, vec!["1/a/m/f"])]);
        assert_eq!(finished(&step), [0, 1, 2], "empty folders are listed too");
        assert_eq!(request(&walk), None);
    }

    #[test]
    fn keys_that_merely_share_a_name_prefix_are_never_taken() {
        let mut walk = one_walk(&["1/a/m/"]);
        let step = walk.page(
            objects(&["1/a/m", "1/a/m.bak/f", "1/a/m/f", "1/a/m0/f"]),
            true,
        );
        assert_eq!(taken(&step), [(0, vec!["1/a/m/f"])]);
        assert_eq!(finished(&step), [0]);
    }

    #[test]
    fn the_folder_marker_key_itself_is_taken() {
        let mut walk = one_walk(&["1/a/m/"]);
        let step = walk.page(objects(&["1/a/m/", "1/a/m/f"]), false);
        assert_eq!(taken(&step), [(0, vec!["1/a/m/", "1/a/m/f"])]);
    }

    #[test]
    fn walks_split_by_bucket_and_first_segment_and_into_width_chunks() {
        let locations = [
            loc("mlflow", "2/r1/artifacts/model/"),
            loc("mlflow", "1/r1/artifacts/model/"),
            loc("mlflow", "1/r2/artifacts/model/"),
            loc("mlflow", "1/r3/artifacts/model/"),
            loc("other", "1/r4/artifacts/model/"),
        ];
        let walks = plan(
            locations
                .iter()
                .enumerate()
                .map(|(at, l)| (RunIndex::new(at), l)),
            2,
        );
        let shape: Vec<(&str, &str, Vec<usize>)> = walks
            .iter()
            .map(|w| {
                let runs = w.folders.iter().map(|f| f.run.get()).collect();
                (w.bucket.as_str(), w.root.as_str(), runs)
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("mlflow", "1/", vec![1, 2]),
                ("mlflow", "1/r3/artifacts/model/", vec![3]),
                ("mlflow", "2/r1/artifacts/model/", vec![0]),
                ("other", "1/r4/artifacts/model/", vec![4]),
            ]
        );
    }

    #[test]
    fn nested_or_repeated_folders_get_walks_of_their_own() {
        let locations = [
            loc("mlflow", "1/a/"),
            loc("mlflow", "1/a/b/"),
            loc("mlflow", "1/a/"),
            loc("mlflow", "1/c/"),
        ];
        let walks = plan(
            locations
                .iter()
                .enumerate()
                .map(|(at, l)| (RunIndex::new(at), l)),
            1,
        );
        let shape: Vec<Vec<&str>> = walks
            .iter()
            .map(|w| w.folders.iter().map(|f| f.prefix.as_str()).collect())
            .collect();
        assert_eq!(shape, [vec!["1/a/", "1/c/"], vec!["1/a/"], vec!["1/a/b/"]]);
    }

    #[test]
    fn a_walk_requests_each_folder_at_most_once_more_than_its_pages() {
        // Folders far apart: each request starts at the next folder, never in a gap.
        let mut walk = one_walk(&["1/a/", "1/m/", "1/z/"]);
        let mut requests = 0;
        let pages = [
            (objects(&["1/a/1", "1/b/1", "1/b/2"]), true),
            (objects(&["1/m/1", "1/n/1"]), true),
            (objects(&["1/z/1"]), false),
        ];
        let mut finished = Vec::new();
        for (page, more) in pages {
            assert!(walk.request().is_some());
            requests += 1;
            finished.extend(walk.page(page, more).finished.iter().map(|r| r.get()));
        }
        assert_eq!(requests, 3);
        assert_eq!(finished, [0, 1, 2]);
        assert_eq!(walk.request(), None);
    }
}
