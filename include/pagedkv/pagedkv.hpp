// pagedkv: the KV cache of transformer inference managed like virtual memory, on Vulkan.
// Include this one header and link pagedkv::pagedkv.
#pragma once

#include "pagedkv/block_pool.hpp"
#include "pagedkv/context.hpp"
#include "pagedkv/detailed_stats.hpp"
#include "pagedkv/dtype.hpp"
#include "pagedkv/dynamic_cache.hpp"
#include "pagedkv/encoder_decoder_cache.hpp"
#include "pagedkv/error.hpp"
#include "pagedkv/kv_cache.hpp"
#include "pagedkv/kv_manager.hpp"
#include "pagedkv/page_layout.hpp"
#include "pagedkv/paged_kv_cache.hpp"
#include "pagedkv/paged_view.hpp"
#include "pagedkv/sliding_window_cache.hpp"
#include "pagedkv/snapshot.hpp"
#include "pagedkv/static_cache.hpp"
#include "pagedkv/tensor.hpp"
#include "pagedkv/transfer.hpp"
#include "pagedkv/version.hpp"
