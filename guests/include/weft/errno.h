/*
 * <weft/errno.h>: the WASI errno numbers weft's guest ABIs return (`wasix_32v1.context_*`
 * returns them as is, `weft_http_v1.*` negated). They are wasi-libc's numbers; the host's one
 * definition is `weft_wasix_context::Errno`, and a test checks this file against it.
 */
#ifndef WEFT_ERRNO_H
#define WEFT_ERRNO_H

#include <stdint.h>

#define WEFT_EAGAIN 6
#define WEFT_EALREADY 7
#define WEFT_EBADF 8
#define WEFT_ECONNREFUSED 14
#define WEFT_EFAULT 21
#define WEFT_EINVAL 28
#define WEFT_EIO 29
#define WEFT_EMSGSIZE 35
#define WEFT_ENOENT 44
#define WEFT_ENOMEM 48
#define WEFT_EPIPE 64
#define WEFT_ETIMEDOUT 73

/* The C name of an errno (`err` or `-err`), "SUCCESS" for 0, "E?" for one weft never returns. */
static inline const char *weft_errno_name(int32_t err) {
  switch (err < 0 ? -err : err) {
  case 0:
    return "SUCCESS";
  case WEFT_EAGAIN:
    return "EAGAIN";
  case WEFT_EALREADY:
    return "EALREADY";
  case WEFT_EBADF:
    return "EBADF";
  case WEFT_ECONNREFUSED:
    return "ECONNREFUSED";
  case WEFT_EFAULT:
    return "EFAULT";
  case WEFT_EINVAL:
    return "EINVAL";
  case WEFT_EIO:
    return "EIO";
  case WEFT_EMSGSIZE:
    return "EMSGSIZE";
  case WEFT_ENOENT:
    return "ENOENT";
  case WEFT_ENOMEM:
    return "ENOMEM";
  case WEFT_EPIPE:
    return "EPIPE";
  case WEFT_ETIMEDOUT:
    return "ETIMEDOUT";
  default:
    return "E?";
  }
}

#endif /* WEFT_ERRNO_H */
