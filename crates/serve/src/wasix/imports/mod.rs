//! The `weft_http_v1` imports, one file per area. Their reference is
//! `docs/weft-http-abi.md`; `guests/include/weft/http.h` declares them for C, and a test
//! checks the header against [`import_signatures`].
//!
//! Every import is attributed to the request the calling context works for. None blocks:
//! waiting is the guest switching to main after `block_on` (see the instance's scheduler).

mod attribution;
mod contexts;
mod fetch;
mod memory;
mod request;
mod response;
mod time;

use wasmtime::{Caller, Engine, Extern, FuncType, Linker};
use weft_http_attrib::{Attribution, RequestId};
use weft_wasix_context::{Errno, WasixContexts};

use super::state::{HostState, InstanceHttp, contexts_of};

/// The import module of the ABI.
pub const IMPORT_MODULE: &str = "weft_http_v1";

/// The ABI's version: the number in [`IMPORT_MODULE`]. A change that breaks guests gets a
/// new module name, so an old guest is refused at load with the import it lacks.
pub const ABI_VERSION: u32 = 1;

/// Adds every `weft_http_v1` import to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    request::add_to_linker(linker)?;
    response::add_to_linker(linker)?;
    fetch::add_to_linker(linker)?;
    time::add_to_linker(linker)?;
    contexts::add_to_linker(linker)?;
    attribution::add_to_linker(linker)?;
    Ok(())
}

/// Every import of the ABI with its wasm type, sorted by name: what the C header must declare.
pub fn import_signatures() -> Vec<(String, FuncType)> {
    let engine = Engine::default();
    let mut linker = Linker::new(&engine);
    add_to_linker(&mut linker).expect("the imports have distinct names");
    let mut store = wasmtime::Store::new(&engine, HostState::placeholder());
    let funcs: Vec<(String, wasmtime::Func)> = linker
        .iter(&mut store)
        .filter(|(module, _, _)| *module == IMPORT_MODULE)
        .filter_map(|(_, name, item)| match item {
            Extern::Func(func) => Some((name.to_string(), func)),
            _ => None,
        })
        .collect();
    let mut imports: Vec<(String, FuncType)> = funcs
        .into_iter()
        .map(|(name, func)| (name, func.ty(&store)))
        .collect();
    imports.sort_by(|a, b| a.0.cmp(&b.0));
    imports
}

/// Runs `f` with the guest's memory, the instance's HTTP state and its contexts, after
/// applying the guest's context events (so a context created since the last host call is
/// attributed before anything it does is).
fn with_guest<R>(
    caller: &mut Caller<'_, HostState>,
    f: impl FnOnce(&mut [u8], &mut InstanceHttp, &WasixContexts) -> R,
) -> wasmtime::Result<R> {
    // A context whose C frames outgrew its region must not reach the host with memory it has
    // overwritten: it traps here instead.
    WasixContexts::check_active_shadow_stack(&mut *caller, contexts_of)?;
    let memory = caller
        .get_export("memory")
        .and_then(Extern::into_memory)
        .ok_or_else(|| wasmtime::Error::msg("the guest exports no `memory`"))?;
    let (memory, state) = memory.data_and_store_mut(caller);
    let HostState { contexts, http, .. } = state;
    let http = http
        .as_mut()
        .ok_or_else(|| wasmtime::Error::msg("weft_http_v1 called outside `weft serve`"))?;
    http.apply_context_events(contexts)?;
    Ok(f(memory, http, contexts))
}

/// The request the calling context works for, if it is live on this instance; `EINVAL`
/// otherwise (main, or a context that works for no request).
fn current(http: &InstanceHttp, contexts: &WasixContexts) -> Result<RequestId, Errno> {
    let request = http
        .attribution
        .attribute(&contexts.active())
        .map_err(|_| Errno::Inval)?;
    if http.requests.contains_key(&request) {
        Ok(request)
    } else {
        Err(Errno::Inval)
    }
}
