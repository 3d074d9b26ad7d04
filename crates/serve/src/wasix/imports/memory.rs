//! Guest memory access for the imports: every pointer and length a guest passes is checked
//! here, and every read follows the ABI's one convention.

use weft_wasix_context::Errno;

/// The bytes `[ptr, ptr + len)` of guest memory; `EINVAL` for a negative length, `EFAULT`
/// outside memory.
pub(super) fn guest_slice(memory: &[u8], ptr: i32, len: i32) -> Result<&[u8], Errno> {
    let len = usize::try_from(len).map_err(|_| Errno::Inval)?;
    let start = ptr as u32 as usize;
    let end = start.checked_add(len).ok_or(Errno::Fault)?;
    memory.get(start..end).ok_or(Errno::Fault)
}

/// The ABI's read convention: copies bytes `[offset, offset + cap)` of `value` (fewer at its
/// end, none past it) to `ptr` and returns the value's full length, so one call with a big
/// enough buffer reads it all and a short buffer can page through it. `EINVAL` for a negative
/// `cap` or `offset`, `EFAULT` for a buffer outside memory (even when nothing would be copied).
pub(super) fn read_into(
    memory: &mut [u8],
    ptr: i32,
    cap: i32,
    offset: i32,
    value: &[u8],
) -> Result<i32, Errno> {
    let cap = usize::try_from(cap).map_err(|_| Errno::Inval)?;
    let offset = usize::try_from(offset).map_err(|_| Errno::Inval)?;
    let start = ptr as u32 as usize;
    let dest = start
        .checked_add(cap)
        .and_then(|end| memory.get_mut(start..end))
        .ok_or(Errno::Fault)?;
    let rest = value.get(offset..).unwrap_or(&[]);
    let n = cap.min(rest.len());
    dest[..n].copy_from_slice(&rest[..n]);
    // Values are bounded far below 2 GiB (request and fetch bodies are capped).
    i32::try_from(value.len()).map_err(|_| Errno::Inval)
}

/// An import's result: `>= 0` is success, `< 0` minus a WASI errno.
pub(super) fn ret(result: Result<i32, Errno>) -> i32 {
    result.unwrap_or_else(|errno| -errno.raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_return_the_full_length_and_copy_from_the_offset() {
        let mut memory = vec![0u8; 16];
        assert_eq!(read_into(&mut memory, 4, 3, 0, b"hello"), Ok(5));
        assert_eq!(&memory[4..8], b"hel\0");
        assert_eq!(read_into(&mut memory, 0, 4, 3, b"hello"), Ok(5));
        assert_eq!(&memory[..2], b"lo");
        assert_eq!(read_into(&mut memory, 0, 4, 5, b"hello"), Ok(5));
        assert_eq!(read_into(&mut memory, 0, 4, 100, b"hello"), Ok(5));
        assert_eq!(read_into(&mut memory, 16, 0, 0, b"x"), Ok(1));
    }

    #[test]
    fn reads_check_their_buffer_and_arguments() {
        let mut memory = vec![0u8; 16];
        assert_eq!(
            read_into(&mut memory, 14, 4, 0, b"hello"),
            Err(Errno::Fault)
        );
        assert_eq!(
            read_into(&mut memory, -1, 4, 0, b"hello"),
            Err(Errno::Fault)
        );
        assert_eq!(read_into(&mut memory, 0, -1, 0, b"x"), Err(Errno::Inval));
        assert_eq!(read_into(&mut memory, 0, 1, -1, b"x"), Err(Errno::Inval));
    }

    #[test]
    fn guest_slice_refuses_ranges_outside_memory() {
        let memory = [1u8; 8];
        assert_eq!(guest_slice(&memory, 2, 3), Ok(&memory[2..5]));
        assert_eq!(guest_slice(&memory, 6, 3), Err(Errno::Fault));
        assert_eq!(guest_slice(&memory, 0, -1), Err(Errno::Inval));
        assert_eq!(ret(Err(Errno::Badf)), -8);
    }
}
