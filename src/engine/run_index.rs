//! A planned run's place in the pass's plan: the key every stage of the deletion pipeline
//! (listing walks, batches, looks, recordings, marks) knows a run by, kept apart from the counts
//! and sizes that are plain integers too.

use std::ops::{Index, IndexMut};

/// The index of a run in the pass's planned deletions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RunIndex(usize);

impl RunIndex {
    /// The run at `at` in the plan.
    #[cfg(test)]
    pub(crate) const fn new(at: usize) -> Self {
        RunIndex(at)
    }

    /// Every run of a plan of `count` runs, in plan order.
    pub(crate) fn all(count: usize) -> impl Iterator<Item = RunIndex> {
        (0..count).map(RunIndex)
    }

    /// The position in the plan.
    pub(crate) const fn get(self) -> usize {
        self.0
    }

    /// This run's item in `planned`, a list in plan order.
    pub(crate) fn of<T>(self, planned: &[T]) -> &T {
        &planned[self.0]
    }
}

/// One value per planned run, indexed by [`RunIndex`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PerRun<T>(Vec<T>);

impl<T> PerRun<T> {
    /// Every run's value with its index, in plan order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (RunIndex, &T)> {
        self.0.iter().enumerate().map(|(at, v)| (RunIndex(at), v))
    }

    /// The number of runs.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

impl<T> FromIterator<T> for PerRun<T> {
    fn from_iter<I: IntoIterator<Item = T>>(values: I) -> Self {
        PerRun(values.into_iter().collect())
    }
}

impl<T> Index<RunIndex> for PerRun<T> {
    type Output = T;

    fn index(&self, run: RunIndex) -> &T {
        &self.0[run.0]
    }
}

impl<T> IndexMut<RunIndex> for PerRun<T> {
    fn index_mut(&mut self, run: RunIndex) -> &mut T {
        &mut self.0[run.0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_found_by_their_run_in_plan_order() {
        let mut seen: PerRun<bool> = RunIndex::all(3).map(|_| false).collect();
        seen[RunIndex::new(1)] = true;
        assert_eq!(seen.len(), 3);
        let marked: Vec<usize> = seen
            .iter()
            .filter(|(_, seen)| **seen)
            .map(|(run, _)| run.get())
            .collect();
        assert_eq!(marked, [1]);
    }
}
