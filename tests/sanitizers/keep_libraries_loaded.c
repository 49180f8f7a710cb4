/* Keeps every shared library the process loads mapped until it exits; linked into the test
 * programs of sanitizer builds only (tests/CMakeLists.txt).
 *
 * The Vulkan loader unloads the drivers (every ICD installed, not only the one used) at
 * vkDestroyInstance. What a driver keeps for the life of the process then becomes unreachable,
 * and LeakSanitizer reports it from "<unknown module>", where no suppression can name it: the
 * leak check would depend on which drivers a machine has. Kept mapped, the drivers' globals
 * still point at what they hold, so none of it is a leak, and a leak of pagedkv's own is still
 * reported with its frames (nothing of ours is suppressed).
 *
 * This definition takes the place of libc's for the libraries that call dlclose (the loader),
 * as a program's own symbols come first in the dynamic linker's lookup. */
int dlclose(void* handle);

int dlclose(void* handle) {
    (void)handle;
    return 0;
}
