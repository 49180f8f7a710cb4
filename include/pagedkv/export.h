/* PAGEDKV_API marks what the library exports: the public C++ API of include/pagedkv and the C
 * interface of pagedkv.h. Everything else is built with hidden visibility. Plain C, so that
 * pagedkv.h may include it. PAGEDKV_STATIC: a static build of the library (nothing to export
 * or import). */
#ifndef PAGEDKV_EXPORT_H
#define PAGEDKV_EXPORT_H

#if defined(PAGEDKV_STATIC)
#define PAGEDKV_API
#elif defined(_WIN32)
#if defined(PAGEDKV_BUILDING_LIBRARY)
#define PAGEDKV_API __declspec(dllexport)
#else
#define PAGEDKV_API __declspec(dllimport)
#endif
#else
#define PAGEDKV_API __attribute__((visibility("default")))
#endif

/* PAGEDKV_LOCAL: a member of an exported class that only the library calls (its signature names
 * internal types), kept out of the exported symbols. */
#if defined(_WIN32)
#define PAGEDKV_LOCAL
#else
#define PAGEDKV_LOCAL __attribute__((visibility("hidden")))
#endif

#endif /* PAGEDKV_EXPORT_H */
