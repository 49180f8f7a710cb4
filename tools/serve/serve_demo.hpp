// `pagedkv-demo serve [options]`: the serving engine demo (tools/serve/serve_demo.cpp).
#pragma once

namespace pagedkv::serve {

// argv[0] is "serve"; returns the process's exit status.
int serve_main(int argc, char** argv);

}  // namespace pagedkv::serve
