//! Walking another thread's stack from the monitor thread, with every read checked.
//!
//! The capture handler stops the blocked thread and hands over the registers of the
//! interrupted code; this module walks that stack from here, by the DWARF call frame
//! information (`.eh_frame`) of the loaded objects, as a debugger would. Nothing it does
//! can fault: the target's memory is read with `process_vm_readv`, which fails with
//! `EFAULT` where an unwinder reading it directly would crash (an unwinder running in a
//! signal handler, `_Unwind_Backtrace`, segfaulted when the signal landed in the middle of
//! a stack switch, where the compiler's unwind tables do not describe the stack). A walk
//! that goes wrong ends early instead: no unwind information, an unreadable word, a caller
//! frame that is not above its callee (except across a signal frame, which is how
//! corosensei marks the switch from a coroutine's stack to its resumer's).
//!
//! The instructions where even correct tables cannot describe the stack — corosensei's
//! context switches, written in assembly that moves the stack pointer behind the
//! compiler's back — are recognised by their bytes ([`in_stack_switch`]): a capture that
//! lands there is not walked at all, and the monitor tries again at its next look.

use std::ffi::c_void;

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, EndianSlice, NativeEndian, Operation,
    ParsedEhFrameHdr, Register, RegisterRule, UnwindContext, UnwindExpression, UnwindSection,
};

/// DWARF register numbers on x86_64 (the System V psABI's).
pub(crate) mod reg {
    pub(crate) const RBX: usize = 3;
    pub(crate) const RBP: usize = 6;
    pub(crate) const RSP: usize = 7;
    pub(crate) const R12: usize = 12;
    pub(crate) const R13: usize = 13;
    pub(crate) const R14: usize = 14;
    pub(crate) const R15: usize = 15;
    /// The return address column (the caller's instruction pointer).
    pub(crate) const RA: usize = 16;
}

/// Register values by DWARF number (`None`: not known).
pub(crate) type Regs = [Option<u64>; 17];

type Slice = EndianSlice<'static, NativeEndian>;

/// A loaded object's executable ranges and unwind tables.
struct Module {
    /// `[start, end)` of each executable segment.
    text: Vec<(u64, u64)>,
    hdr: ParsedEhFrameHdr<Slice>,
    eh_frame: EhFrame<Slice>,
    bases: BaseAddresses,
}

/// How a walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WalkEnd {
    /// At the outermost frame (its return address is undefined, as `_start`'s is).
    Outermost,
    /// At a frame without unwind information, or whose information could not be used.
    NoInfo,
    /// A read failed, or the frames did not make sense: the walk stopped there.
    Invalid,
    /// At the frame limit.
    Limit,
}

/// Walks stacks of this process's threads (see the module docs). Keeps its buffers and
/// the list of loaded objects between walks, so that a walk allocates nothing.
pub(crate) struct Unwinder {
    modules: Vec<Module>,
    /// Handles that keep the listed objects loaded while `modules` reads their tables.
    pins: Vec<Pin>,
    ctx: Box<UnwindContext<usize>>,
    memory: Memory,
}

impl Unwinder {
    pub(crate) fn new() -> Unwinder {
        Unwinder {
            modules: Vec::new(),
            pins: Vec::new(),
            ctx: Box::new(UnwindContext::new()),
            memory: Memory::new(),
        }
    }

    /// Reads the list of loaded objects again (before a capture: never while a thread is
    /// held, since `dl_iterate_phdr` takes the loader's lock, which it might hold). The
    /// objects listed stay loaded until the next refresh: a `dlclose` by the program
    /// meanwhile only drops its own reference.
    pub(crate) fn refresh_modules(&mut self) {
        let (modules, pins) = loaded_modules();
        self.modules = modules;
        // The old handles go after the new ones are taken, and after the old tables.
        self.pins = pins;
    }

    /// Forgets the memory read so far (the stacks have moved on since).
    pub(crate) fn forget_memory(&mut self) {
        self.memory.clear();
    }

    /// Is `pc` in one of corosensei's stack switches, where the stack cannot be walked?
    pub(crate) fn in_stack_switch(&mut self, pc: u64) -> bool {
        in_stack_switch(pc, |at| self.memory.byte(at))
    }

    /// Walks the stack of a stopped thread whose interrupted code was at `pc` with the
    /// registers `regs`, pushing `pc` and then each caller's return address into `out`
    /// (at most `max`). The thread must stay stopped while this runs.
    pub(crate) fn walk(
        &mut self,
        pc: u64,
        mut regs: Regs,
        out: &mut Vec<usize>,
        max: usize,
    ) -> WalkEnd {
        let mut pc = pc;
        // The first frame was interrupted at `pc` itself; a caller's return address
        // points after its call, so its unwind row is that of the byte before, unless
        // the callee was a signal frame (then the caller resumes exactly there).
        let mut exact = true;
        out.push(pc as usize);
        loop {
            if out.len() >= max {
                return WalkEnd::Limit;
            }
            let lookup = if exact { pc } else { pc.wrapping_sub(1) };
            let step = match self.step(lookup, &regs) {
                Ok(step) => step,
                Err(end) => return end,
            };
            let Step {
                regs: caller,
                cfa,
                signal_frame,
            } = step;
            let Some(ra) = caller[reg::RA] else {
                return WalkEnd::Outermost;
            };
            if ra == 0 {
                return WalkEnd::Outermost;
            }
            // A caller's frame lies above its callee's on the same stack; only a signal
            // frame (a coroutine's root, a signal trampoline) moves to another stack.
            let sp = regs[reg::RSP].unwrap_or(0);
            if !signal_frame && cfa <= sp {
                return WalkEnd::Invalid;
            }
            out.push(ra as usize);
            regs = caller;
            pc = ra;
            exact = signal_frame;
        }
    }

    /// Unwinds one frame: the caller's registers, the frame's CFA and whether it is a
    /// signal frame.
    fn step(&mut self, pc: u64, regs: &Regs) -> Result<Step, WalkEnd> {
        let module = self
            .modules
            .iter()
            .find(|m| m.text.iter().any(|&(s, e)| (s..e).contains(&pc)))
            .ok_or(WalkEnd::NoInfo)?;
        let table = module.hdr.table().ok_or(WalkEnd::NoInfo)?;
        let fde = table
            .fde_for_address(
                &module.eh_frame,
                &module.bases,
                pc,
                EhFrame::cie_from_offset,
            )
            .map_err(|_| WalkEnd::NoInfo)?;
        let row = fde
            .unwind_info_for_address(&module.eh_frame, &module.bases, &mut self.ctx, pc)
            .map_err(|_| WalkEnd::NoInfo)?;
        let memory = &mut self.memory;
        let eh_frame = &module.eh_frame;
        let cfa = match row.cfa() {
            CfaRule::RegisterAndOffset { register, offset } => regs
                .get(usize::from(register.0))
                .copied()
                .flatten()
                .ok_or(WalkEnd::NoInfo)?
                .wrapping_add_signed(*offset),
            CfaRule::Expression(e) => evaluate(e, eh_frame, regs, memory).ok_or(WalkEnd::NoInfo)?,
        };
        // The caller's stack pointer is the CFA (x86_64); callee-saved registers without
        // a rule keep their value.
        let mut caller = *regs;
        caller[reg::RSP] = Some(cfa);
        for n in [
            reg::RBX,
            reg::RBP,
            reg::RSP,
            reg::R12,
            reg::R13,
            reg::R14,
            reg::R15,
            reg::RA,
        ] {
            let rule = row.register(Register(n as u16));
            let value = match rule {
                None if n == reg::RA => None,
                None | Some(RegisterRule::SameValue) => caller[n],
                Some(RegisterRule::Undefined) => None,
                Some(RegisterRule::Offset(off)) => Some(
                    memory
                        .u64(cfa.wrapping_add_signed(off))
                        .ok_or(WalkEnd::Invalid)?,
                ),
                Some(RegisterRule::ValOffset(off)) => Some(cfa.wrapping_add_signed(off)),
                Some(RegisterRule::Register(r)) => regs.get(usize::from(r.0)).copied().flatten(),
                Some(RegisterRule::Expression(e)) => {
                    let at = evaluate(&e, eh_frame, regs, memory).ok_or(WalkEnd::Invalid)?;
                    Some(memory.u64(at).ok_or(WalkEnd::Invalid)?)
                }
                Some(RegisterRule::ValExpression(e)) => {
                    Some(evaluate(&e, eh_frame, regs, memory).ok_or(WalkEnd::Invalid)?)
                }
                Some(RegisterRule::Constant(v)) => Some(v),
                Some(_) => return Err(WalkEnd::NoInfo),
            };
            caller[n] = value;
        }
        Ok(Step {
            regs: caller,
            cfa,
            signal_frame: fde.is_signal_trampoline(),
        })
    }
}

struct Step {
    regs: Regs,
    cfa: u64,
    signal_frame: bool,
}

/// Evaluates a CFI expression (the subset that call frame information uses: register
/// offsets, loads, constants and arithmetic) to the value it leaves on the stack.
fn evaluate(
    expr: &UnwindExpression<usize>,
    section: &EhFrame<Slice>,
    regs: &Regs,
    memory: &mut Memory,
) -> Option<u64> {
    let encoding = gimli::Encoding {
        address_size: 8,
        format: gimli::Format::Dwarf32,
        version: 4,
    };
    let mut bytes = expr.get(section).ok()?.0;
    let mut stack = [0_u64; 16];
    let mut n = 0_usize;
    macro_rules! push {
        ($v:expr) => {{
            let v = $v;
            *stack.get_mut(n)? = v;
            n += 1;
        }};
    }
    macro_rules! pop {
        () => {{
            n = n.checked_sub(1)?;
            stack[n]
        }};
    }
    while !bytes.is_empty() {
        match Operation::parse(&mut bytes, encoding).ok()? {
            Operation::RegisterOffset {
                register,
                offset,
                base_type,
            } if base_type.0 == 0 => {
                let r = regs.get(usize::from(register.0)).copied().flatten()?;
                push!(r.wrapping_add_signed(offset));
            }
            Operation::Deref {
                size: 8,
                space: false,
                base_type,
            } if base_type.0 == 0 => {
                let at = pop!();
                push!(memory.u64(at)?);
            }
            Operation::PlusConstant { value } => {
                let v = pop!();
                push!(v.wrapping_add(value));
            }
            Operation::UnsignedConstant { value } => push!(value),
            Operation::SignedConstant { value } => push!(value as u64),
            Operation::Plus => {
                let (b, a) = (pop!(), pop!());
                push!(a.wrapping_add(b));
            }
            Operation::Minus => {
                let (b, a) = (pop!(), pop!());
                push!(a.wrapping_sub(b));
            }
            Operation::And => {
                let (b, a) = (pop!(), pop!());
                push!(a & b);
            }
            Operation::Or => {
                let (b, a) = (pop!(), pop!());
                push!(a | b);
            }
            Operation::Drop => {
                pop!();
            }
            Operation::Pick { index } => {
                let i = n.checked_sub(1 + usize::from(index))?;
                push!(stack[i]);
            }
            Operation::Swap => {
                let (b, a) = (pop!(), pop!());
                push!(b);
                push!(a);
            }
            Operation::Nop => {}
            _ => return None,
        }
    }
    (n > 0).then(|| stack[n - 1])
}

/// A `dlopen` handle on a loaded object: while it is held, the object cannot be unloaded.
struct Pin(*mut c_void);

// SAFETY: a handle from `dlopen` is not tied to the thread that opened it; `dlclose` may
// be called from any thread.
unsafe impl Send for Pin {}

impl Drop for Pin {
    fn drop(&mut self) {
        // SAFETY: a handle `dlopen` returned, closed once, here.
        unsafe { libc::dlclose(self.0) };
    }
}

/// The count of objects unloaded so far in this process (glibc's `dlpi_subs`).
fn unloads_so_far() -> u64 {
    unsafe extern "C" fn first(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `u64` passed below; `info` is valid during the call.
        unsafe { *data.cast::<u64>() = (*info).dlpi_subs };
        1 // the counter is the same in every entry: stop at the first
    }
    let mut subs = 0_u64;
    // SAFETY: `first` matches the callback type and only writes `data` as the u64 it is.
    unsafe { libc::dl_iterate_phdr(Some(first), (&mut subs as *mut u64).cast()) };
    subs
}

/// The loaded objects with unwind tables (`PT_GNU_EH_FRAME`), the vDSO included, and the
/// handles that keep them loaded while their tables are read.
///
/// Each object that has a name is pinned with `dlopen(RTLD_NOLOAD)`, and the list is
/// taken again if an object was unloaded between the listing and the pinning (glibc's
/// unload counter moved): so every listed object stays mapped while it is pinned. The
/// objects without a name (the program, the vDSO) are never unloaded.
fn loaded_modules() -> (Vec<Module>, Vec<Pin>) {
    for _ in 0..3 {
        let before = unloads_so_far();
        let (raws, names) = list_objects();
        let pins: Vec<Pin> = names
            .iter()
            .filter_map(|name| {
                // SAFETY: `name` is a NUL-terminated copy of a loaded object's name;
                // RTLD_NOLOAD never loads anything, it only adds a reference.
                let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY) };
                (!h.is_null()).then_some(Pin(h))
            })
            .collect();
        if unloads_so_far() == before {
            return (modules_of(raws), pins);
        }
    }
    // Objects keep being unloaded: no tables this time (the walk stops at the first frame).
    (Vec::new(), Vec::new())
}

/// What `dl_iterate_phdr` says of one loaded object.
struct Raw {
    text: Vec<(u64, u64)>,
    /// `[start, end)` of each loaded segment.
    loads: Vec<(u64, u64)>,
    hdr: Option<(u64, u64)>,
}

/// The loaded objects, and the names of those that have one.
fn list_objects() -> (Vec<Raw>, Vec<std::ffi::CString>) {
    #[derive(Default)]
    struct Found {
        raws: Vec<Raw>,
        names: Vec<std::ffi::CString>,
    }
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `Found` passed to dl_iterate_phdr below, and `info`
        // describes one loaded object, its `dlpi_phnum` headers at `dlpi_phdr` and its
        // NUL-terminated `dlpi_name`, valid for the duration of this call.
        let (found, info) = unsafe { (&mut *data.cast::<Found>(), &*info) };
        let phdrs: &[libc::Elf64_Phdr] = if info.dlpi_phdr.is_null() {
            &[]
        } else {
            // SAFETY: as above.
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
        };
        if !info.dlpi_name.is_null() {
            // SAFETY: as above.
            let name = unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) };
            if !name.is_empty() {
                found.names.push(name.to_owned());
            }
        }
        let bias = info.dlpi_addr;
        let mut raw = Raw {
            text: Vec::new(),
            loads: Vec::new(),
            hdr: None,
        };
        for ph in phdrs {
            let range = (bias + ph.p_vaddr, bias + ph.p_vaddr + ph.p_memsz);
            match ph.p_type {
                libc::PT_LOAD => {
                    raw.loads.push(range);
                    if ph.p_flags & libc::PF_X != 0 {
                        raw.text.push(range);
                    }
                }
                libc::PT_GNU_EH_FRAME => raw.hdr = Some(range),
                _ => {}
            }
        }
        found.raws.push(raw);
        0
    }
    let mut found = Found::default();
    // SAFETY: `each` matches the callback type and only uses `data` as the Found it is.
    unsafe { libc::dl_iterate_phdr(Some(each), (&mut found as *mut Found).cast()) };
    (found.raws, found.names)
}

/// The unwind tables of `raws`, read in place.
///
/// Each object must stay loaded while the modules are used (see [`loaded_modules`]).
fn modules_of(raws: Vec<Raw>) -> Vec<Module> {
    let within = |loads: &[(u64, u64)], at: u64| {
        loads
            .iter()
            .find(|&&(s, e)| (s..e).contains(&at))
            .map(|&(_, e)| e)
    };
    raws.into_iter()
        .filter_map(|raw| {
            let (hdr_at, hdr_end) = raw.hdr?;
            let hdr_end = within(&raw.loads, hdr_at)?.min(hdr_end.max(hdr_at));
            // SAFETY: `.eh_frame_hdr` lies in a loaded, readable segment of an object that
            // stays loaded as long as the tables made here are used: the caller holds a
            // pin on it, or it is the program or the vDSO (see `loaded_modules`); the
            // slice is dropped with `Unwinder::modules`, before the pin.
            let hdr_bytes: &'static [u8] = unsafe {
                std::slice::from_raw_parts(hdr_at as *const u8, (hdr_end - hdr_at) as usize)
            };
            let bases = BaseAddresses::default().set_eh_frame_hdr(hdr_at);
            let hdr = EhFrameHdr::new(hdr_bytes, NativeEndian)
                .parse(&bases, 8)
                .ok()?;
            let eh_at = hdr.eh_frame_ptr().direct().ok()?;
            let eh_end = within(&raw.loads, eh_at)?;
            // SAFETY: as for `.eh_frame_hdr`: `.eh_frame` is read from where it starts to
            // the end of its loaded segment (gimli reads entries by their offsets).
            let eh_bytes: &'static [u8] = unsafe {
                std::slice::from_raw_parts(eh_at as *const u8, (eh_end - eh_at) as usize)
            };
            let mut eh_frame = EhFrame::new(eh_bytes, NativeEndian);
            eh_frame.set_address_size(8);
            let text_at = raw.text.first().map_or(0, |t| t.0);
            Some(Module {
                text: raw.text,
                hdr,
                eh_frame,
                bases: bases.set_eh_frame(eh_at).set_text(text_at),
            })
        })
        .collect()
}

/// Another thread's memory as this one reads it: a few 4 KiB pages copied with
/// `process_vm_readv`, which fails cleanly on an address that is not mapped.
struct Memory {
    pages: Box<[[u8; PAGE]; PAGES]>,
    /// The address of each cached page (`usize::MAX`: none).
    at: [u64; PAGES],
    next: usize,
}

const PAGE: usize = 4096;
const PAGES: usize = 16;

impl Memory {
    fn new() -> Memory {
        Memory {
            pages: Box::new([[0; PAGE]; PAGES]),
            at: [u64::MAX; PAGES],
            next: 0,
        }
    }

    fn clear(&mut self) {
        self.at = [u64::MAX; PAGES];
    }

    fn page(&mut self, base: u64) -> Option<&[u8; PAGE]> {
        if let Some(i) = self.at.iter().position(|&a| a == base) {
            return Some(&self.pages[i]);
        }
        let i = self.next;
        self.next = (i + 1) % PAGES;
        self.at[i] = u64::MAX;
        let local = libc::iovec {
            iov_base: self.pages[i].as_mut_ptr().cast(),
            iov_len: PAGE,
        };
        let remote = libc::iovec {
            iov_base: base as usize as *mut c_void,
            iov_len: PAGE,
        };
        // SAFETY: copies one page of this process's address space into our own buffer;
        // the kernel checks the remote range and fails (EFAULT, or a short count) where it
        // is not mapped and readable, instead of faulting.
        let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
        if n != PAGE as isize {
            return None;
        }
        self.at[i] = base;
        Some(&self.pages[i])
    }

    fn byte(&mut self, at: u64) -> Option<u8> {
        let base = at & !(PAGE as u64 - 1);
        self.page(base).map(|p| p[(at - base) as usize])
    }

    fn u64(&mut self, at: u64) -> Option<u64> {
        let base = at & !(PAGE as u64 - 1);
        let off = (at - base) as usize;
        if off + 8 <= PAGE {
            let p = self.page(base)?;
            return Some(u64::from_ne_bytes(p[off..off + 8].try_into().ok()?));
        }
        let mut bytes = [0_u8; 8];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = self.byte(at.checked_add(i as u64)?)?;
        }
        Some(u64::from_ne_bytes(bytes))
    }
}

/// One of corosensei's context-switch sequences (x86_64): its bytes (`None`: any byte, a
/// displacement) and the offsets into it at which the stack pointer is not where the
/// enclosing function's unwind table says it is.
struct Sequence {
    bytes: &'static [Option<u8>],
    unwalkable: std::ops::RangeInclusive<usize>,
}

macro_rules! seq {
    (@ _) => { None };
    (@ $b:literal) => { Some($b) };
    ($($b:tt)*) => { &[$(seq!(@ $b)),*] };
}

/// `switch_yield`: saves rbp, rbx and a resume address, moves to the parent's stack,
/// returns into it; resumed at its label, moves back and restores rbx, rbp.
const YIELD: Sequence = Sequence {
    bytes: seq!(0x55 0x53 0x48 0x8d 0x05 _ _ _ _ 0x50 0x48 0x89 0xe6 0x48 0x8b 0x22 0x5d 0xc3
        0x55 0x48 0x89 0x66 0xf0 0x48 0x8d 0x62 0x08 0x5b 0x5d),
    unwalkable: 1..=28,
};

/// `switch_and_link`: pushes rbx, calls into the coroutine; back, pops rbx.
const LINK: Sequence = Sequence {
    bytes: seq!(0x53 0xff 0x12 0x5b),
    unwalkable: 1..=3,
};

/// `switch_and_throw`: like `switch_and_link`, entering a function that unwinds the
/// coroutine.
const THROW: Sequence = Sequence {
    bytes: seq!(0x53 0x48 0x8d 0x05 _ _ _ _ 0x50 0x55 0x48 0x89 0x66 0xf0 0x48 0x89 0xd4 0x58 0x5b
        0x5d 0x50 0xe9 _ _ _ _ 0x5b),
    unwalkable: 1..=26,
};

/// `stack_init_trampoline`, a coroutine's first instructions, until its frame pointer
/// names the parent link its unwind rule reads.
const INIT: Sequence = Sequence {
    bytes: seq!(0x55 0x48 0x89 0x66 0xf0 0x48 0x83 0xee 0x10 0x48 0x8d 0x62 0x08 0x48 0x89 0xf5),
    unwalkable: 0..=15,
};

/// `stack_call_trampoline` (`on_stack`): its frame is set up after its first push and
/// torn down before its `ret`.
const CALL: Sequence = Sequence {
    bytes: seq!(0x55 0x48 0x89 0xe5 0x48 0x89 0xf4 0xff 0xd2 0x48 0x89 0xec 0x5d 0xc3),
    unwalkable: 1..=13,
};

/// Is `pc` inside one of corosensei's stack switches (or a coroutine's first
/// instructions), where no unwind table describes the stack? `byte` reads the code.
/// `switch_and_reset` (`mov rsp, [reg]; pop rbp; ret`, with a register of the
/// compiler's choosing) is recognised by its shape.
fn in_stack_switch(pc: u64, mut byte: impl FnMut(u64) -> Option<u8>) -> bool {
    let matches = |seq: &Sequence, start: u64, byte: &mut dyn FnMut(u64) -> Option<u8>| {
        seq.bytes.iter().enumerate().all(|(i, want)| match want {
            None => true,
            Some(b) => byte(start + i as u64) == Some(*b),
        })
    };
    for seq in [&YIELD, &LINK, &THROW, &INIT, &CALL] {
        for k in seq.unwalkable.clone() {
            if let Some(start) = pc.checked_sub(k as u64)
                && matches(seq, start, &mut byte)
            {
                return true;
            }
        }
    }
    // switch_and_reset: `mov rsp, [r]` (REX.W 8b /4 with a plain register base), then
    // `pop rbp` and `ret`, interrupted before the pop or the ret.
    let reset_at = |mov: u64, byte: &mut dyn FnMut(u64) -> Option<u8>| {
        let rex = byte(mov);
        let modrm = byte(mov + 2);
        matches!(rex, Some(0x48 | 0x49))
            && byte(mov + 1) == Some(0x8b)
            && modrm.is_some_and(|m| m & 0xf8 == 0x20 && m & 7 != 4 && m & 7 != 5)
            && byte(mov + 3) == Some(0x5d)
            && byte(mov + 4) == Some(0xc3)
    };
    [3_u64, 4].into_iter().any(|k| {
        pc.checked_sub(k)
            .is_some_and(|mov| reset_at(mov, &mut byte))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `code` as if it were at address 0x1000.
    fn code_reader(code: &[u8]) -> impl FnMut(u64) -> Option<u8> + '_ {
        move |at| {
            at.checked_sub(0x1000)
                .and_then(|i| code.get(i as usize).copied())
        }
    }

    #[test]
    fn the_objects_whose_tables_are_read_are_pinned_loaded() {
        let mut u = Unwinder::new();
        u.refresh_modules();
        let (_, names) = list_objects();
        // libc (and every shared object the test links) has a name and can be pinned.
        assert!(
            names
                .iter()
                .any(|n| n.to_string_lossy().contains("libc.so"))
        );
        assert!(!u.pins.is_empty(), "no object pinned");
        assert!(u.pins.len() <= names.len());
        u.refresh_modules(); // the old pins go, new ones are taken
        assert!(!u.pins.is_empty());
    }

    #[test]
    fn recognises_each_instruction_of_a_yield_but_not_its_edges() {
        let mut code = vec![0x90; 8];
        code.extend([
            0x55, 0x53, 0x48, 0x8d, 0x05, 0x09, 0, 0, 0, 0x50, 0x48, 0x89, 0xe6, 0x48, 0x8b, 0x22,
            0x5d, 0xc3, 0x55, 0x48, 0x89, 0x66, 0xf0, 0x48, 0x8d, 0x62, 0x08, 0x5b, 0x5d,
        ]);
        code.extend([0x90; 8]);
        let at = |i: u64| 0x1000 + 8 + i;
        assert!(
            !in_stack_switch(at(0), code_reader(&code)),
            "before the first push"
        );
        for i in [1, 2, 9, 10, 13, 16, 17, 18, 19, 23, 27, 28] {
            assert!(in_stack_switch(at(i), code_reader(&code)), "offset {i}");
        }
        assert!(
            !in_stack_switch(at(29), code_reader(&code)),
            "after the last pop"
        );
    }

    #[test]
    fn recognises_a_reset_with_any_base_register() {
        for (rex, modrm) in [(0x48, 0x23), (0x48, 0x20), (0x49, 0x27)] {
            let code = [0x90, rex, 0x8b, modrm, 0x5d, 0xc3, 0x90];
            assert!(in_stack_switch(0x1004, code_reader(&code)));
            assert!(in_stack_switch(0x1005, code_reader(&code)));
            assert!(!in_stack_switch(0x1006, code_reader(&code)));
        }
    }

    #[test]
    fn unreadable_code_is_not_a_switch() {
        assert!(!in_stack_switch(0x10, |_| None));
    }

    #[test]
    fn memory_reads_fail_cleanly_where_nothing_is_mapped() {
        let mut m = Memory::new();
        let x = 0x1122_3344_5566_7788_u64;
        assert_eq!(m.u64(&x as *const u64 as u64), Some(x));
        assert_eq!(m.u64(8), None, "the zero page is never mapped");
        assert_eq!(m.byte(u64::MAX - 3), None);
    }

    #[inline(never)]
    fn here() -> (u64, Regs) {
        // The registers of a frame that is about to call `probe`: its return address
        // is the pc, its stack pointer what the callee's CFA will be.
        let mut regs: Regs = [None; 17];
        let rsp: u64;
        let rbp: u64;
        let rbx: u64;
        let pc: u64;
        // SAFETY: reads registers and the address of the next instruction; no memory or
        // stack is touched.
        unsafe {
            std::arch::asm!(
                "lea {pc}, [rip]",
                "mov {sp}, rsp",
                "mov {bp}, rbp",
                "mov {bx}, rbx",
                pc = out(reg) pc,
                sp = out(reg) rsp,
                bp = out(reg) rbp,
                bx = out(reg) rbx,
            );
        }
        regs[reg::RSP] = Some(rsp);
        regs[reg::RBP] = Some(rbp);
        regs[reg::RBX] = Some(rbx);
        (pc, regs)
    }

    #[test]
    fn walks_its_own_stack_up_to_the_test_harness() {
        let mut u = Unwinder::new();
        u.refresh_modules();
        let (pc, regs) = here();
        let mut out = Vec::new();
        let end = u.walk(pc, regs, &mut out, 96);
        let names: Vec<String> = out
            .iter()
            .map(|&ip| {
                let mut name = String::new();
                backtrace::resolve((ip - 1) as *mut c_void, |s| {
                    if name.is_empty() {
                        name = s.name().map(|n| format!("{n:#}")).unwrap_or_default();
                    }
                });
                name
            })
            .collect();
        assert!(
            names
                .iter()
                .any(|n| n.contains("walks_its_own_stack_up_to_the_test_harness")),
            "{end:?} {names:#?}"
        );
        assert!(
            names
                .iter()
                .any(|n| n.contains("start_thread") || n.contains("clone")),
            "{end:?} {names:#?}"
        );
        assert_eq!(end, WalkEnd::Outermost, "{names:#?}");
    }
}
