//! What every eBPF object of foobar needs besides its programs: a panic
//! handler (never reached: the verifier rejects code that could panic) and
//! the license section the kernel reads (GPL-compatible, for GPL helpers).
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
