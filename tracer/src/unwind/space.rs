//! Ranges of a flat array handed out and given back (first fit, neighbours merged), for the
//! kernel's unwind rows and mappings: an object's rows are one contiguous run, and so are a
//! process's mappings.

/// The free ranges of an array of `capacity` slots.
#[derive(Clone, Debug)]
pub struct Space {
    /// Free (start, length) ranges, sorted, never adjacent.
    free: Vec<(u32, u32)>,
    capacity: u32,
}

impl Space {
    /// An array with every slot free.
    pub fn new(capacity: u32) -> Self {
        Self {
            free: if capacity > 0 {
                vec![(0, capacity)]
            } else {
                Vec::new()
            },
            capacity,
        }
    }

    /// The first free run of `len` slots (`len` > 0), taken; None when no run is that long.
    pub fn take(&mut self, len: u32) -> Option<u32> {
        let index = self.free.iter().position(|&(_, free)| free >= len)?;
        let (start, free) = self.free[index];
        if free == len {
            self.free.remove(index);
        } else {
            self.free[index] = (start + len, free - len);
        }
        Some(start)
    }

    /// Gives back a run taken before.
    pub fn give(&mut self, start: u32, len: u32) {
        if len == 0 {
            return;
        }
        let index = self.free.partition_point(|&(s, _)| s < start);
        debug_assert!(index == 0 || self.free[index - 1].0 + self.free[index - 1].1 <= start);
        self.free.insert(index, (start, len));
        // Merge with the next, then with the previous.
        if index + 1 < self.free.len() && start + len == self.free[index + 1].0 {
            self.free[index].1 += self.free[index + 1].1;
            self.free.remove(index + 1);
        }
        if index > 0 && self.free[index - 1].0 + self.free[index - 1].1 == start {
            self.free[index - 1].1 += self.free[index].1;
            self.free.remove(index);
        }
    }

    /// Slots in use.
    pub fn used(&self) -> u32 {
        self.capacity - self.free.iter().map(|&(_, len)| len).sum::<u32>()
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_taken_first_fit_and_merged_when_given_back() {
        let mut space = Space::new(100);
        let a = space.take(30).unwrap();
        let b = space.take(30).unwrap();
        let c = space.take(30).unwrap();
        assert_eq!((a, b, c), (0, 30, 60));
        assert_eq!(space.take(11), None, "10 left");
        space.give(b, 30);
        assert_eq!(space.used(), 60);
        assert_eq!(space.take(20), Some(30), "first fit reuses b's run");
        space.give(30, 20);
        space.give(a, 30);
        space.give(c, 30);
        assert_eq!(space.used(), 0);
        assert_eq!(space.take(100), Some(0), "all merged back into one run");
        assert_eq!(Space::new(0).take(1), None);
    }
}
