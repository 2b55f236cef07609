// tflm_swap cascade on TensorFlow Lite Micro: see tswap_cascade.h.
#include "tswap_cascade.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <new>

#include "tswap_crc32.h"
#include "tswap_tflm.h"

namespace {

constexpr uint32_t kAlign = 16;

uint32_t AlignUp(uint32_t v) { return (v + kAlign - 1u) & ~(kAlign - 1u); }

int Fail(tswap_cascade* c, int status, const char* format, ...) {
  va_list args;
  va_start(args, format);
  vsnprintf(c->message, sizeof(c->message), format, args);
  va_end(args);
  return status;
}

const tswap_cascade_member& Member(const tswap_cascade* c, int32_t index) { return c->config->members[index]; }

// The largest value of `f(member)` over every member but the router.
template <typename F>
uint32_t LargestOther(const tswap_cascade_config* config, F f) {
  uint32_t most = 0;
  for (uint32_t i = 1; i < config->member_count; ++i) {
    const uint32_t v = f(config->members[i]);
    most = v > most ? v : most;
  }
  return most;
}

bool SameTable(const tswap_image& image, const tswap_cascade_member& m) {
  if (image.segment_count != m.segment_count || image.image_size != m.image_size) return false;
  for (uint32_t i = 0; i < image.segment_count; ++i) {
    const tswap_segment& a = image.segments[i];
    const tswap_segment& b = m.segments[i];
    if (a.offset != b.offset || a.size != b.size || a.crc32 != b.crc32) return false;
  }
  return true;
}

// Index in c->cached of member `index`'s cached image, or -1.
int Cached(const tswap_cascade* c, int32_t index) {
  for (uint32_t k = 0; k < c->cached_count; ++k) {
    if (c->cached[k].member == index) return static_cast<int>(k);
  }
  return -1;
}

uint32_t CacheUsed(const tswap_cascade* c) {
  return c->cached_count == 0 ? 0u : c->cached[c->cached_count - 1].offset + AlignUp(c->cached[c->cached_count - 1].size);
}

// Drops the least recently used cached image, moving the later ones down.
void Evict(tswap_cascade* c) {
  uint32_t victim = 0;
  for (uint32_t k = 1; k < c->cached_count; ++k) victim = c->cached[k].last_use < c->cached[victim].last_use ? k : victim;
  const uint32_t gap = AlignUp(c->cached[victim].size), from = c->cached[victim].offset + gap;
  memmove(c->cache + c->cached[victim].offset, c->cache + from, CacheUsed(c) - from);
  for (uint32_t k = victim + 1; k < c->cached_count; ++k) {
    c->cached[k].offset -= gap;
    c->cached[k - 1] = c->cached[k];
  }
  --c->cached_count;
}

// Reads member `index`'s whole image into the cache when it fits (evicting the least recently used);
// `*read` is the flash bytes that took (0 when it does not fit).
int Admit(tswap_cascade* c, int32_t index, uint64_t* read) {
  tswap_member entry;
  *read = 0;
  int rc = tswap_container_member(&c->container, static_cast<uint32_t>(index), &entry);
  if (rc != TSWAP_OK) return Fail(c, TSWAP_CASCADE_ERR_IMAGE, "member %d: %s", (int)index, tswap_strerror(rc));
  if (AlignUp(entry.size) > c->cache_size) return TSWAP_CASCADE_OK;
  while (c->cached_count == kTswapCascadeMaxCached || CacheUsed(c) + AlignUp(entry.size) > c->cache_size) Evict(c);
  const tswap_flash* flash = c->container.flash;
  tswap_cascade_cached& slot = c->cached[c->cached_count];
  slot.offset = CacheUsed(c);
  if (flash->read(flash->ctx, flash->base + entry.offset, c->cache + slot.offset, entry.size) != 0) {
    return Fail(c, TSWAP_CASCADE_ERR_INVOKE, "member '%s': reading its image into the cache failed",
                Member(c, index).name);
  }
  slot.member = index;
  slot.size = entry.size;
  slot.last_use = c->clock;
  ++c->cached_count;
  *read = entry.size;
  return TSWAP_CASCADE_OK;
}

// Opens member `index`'s image in `slot` (from the cache when it is there) and checks it against the
// generated segment table.
int OpenMember(tswap_cascade* c, int slot, int32_t index) {
  const tswap_cascade_member& m = Member(c, index);
  tswap_member entry;
  const int cached = slot == 1 ? Cached(c, index) : -1;
  int rc = tswap_container_member(&c->container, static_cast<uint32_t>(index), &entry);
  if (rc == TSWAP_OK && cached >= 0) {
    tswap_flash_from_memory(&c->flash[slot], &c->cache_flash, c->cache + c->cached[cached].offset,
                            c->cached[cached].size);
  } else if (rc == TSWAP_OK) {
    rc = tswap_member_flash(&c->container, &entry, &c->flash[slot]);
  }
  if (slot == 1) c->current_cached = cached >= 0;
  if (rc == TSWAP_OK) rc = tswap_image_open(&c->image[slot], &c->flash[slot], c->table[slot], m.segment_count);
  if (rc == TSWAP_ERR_CAPACITY) {
    return Fail(c, TSWAP_CASCADE_ERR_MISMATCH, "member '%s': its image has more segments than the %u generated",
                m.name, (unsigned)m.segment_count);
  }
  if (rc != TSWAP_OK) return Fail(c, TSWAP_CASCADE_ERR_IMAGE, "member '%s': %s", m.name, tswap_strerror(rc));
  if (!SameTable(c->image[slot], m)) {
    return Fail(c, TSWAP_CASCADE_ERR_MISMATCH,
                "member '%s': the image's segment table differs from the generated one (image of another cascade?)",
                m.name);
  }
  return TSWAP_CASCADE_OK;
}

// The container's member table names this config's members, for the same graphs.
int CheckMembers(tswap_cascade* c) {
  const tswap_cascade_config* config = c->config;
  if (c->container.member_count != config->member_count) {
    return Fail(c, TSWAP_CASCADE_ERR_MISMATCH, "the image holds %u members, this cascade has %u",
                (unsigned)c->container.member_count, (unsigned)config->member_count);
  }
  for (uint32_t i = 0; i < config->member_count; ++i) {
    const tswap_cascade_member& m = config->members[i];
    tswap_member entry;
    const int rc = tswap_container_member(&c->container, i, &entry);
    if (rc != TSWAP_OK) return Fail(c, TSWAP_CASCADE_ERR_IMAGE, "member %u: %s", (unsigned)i, tswap_strerror(rc));
    if (strncmp(entry.name, m.name, TSWAP_MEMBER_NAME_BYTES) != 0) {
      return Fail(c, TSWAP_CASCADE_ERR_MISMATCH, "member %u is '%s' in the image but '%s' in this cascade", (unsigned)i,
                  entry.name, m.name);
    }
    if (entry.graph_crc32 != m.graph_crc32 || entry.graph_size != m.graph_size) {
      return Fail(c, TSWAP_CASCADE_ERR_MISMATCH,
                  "member '%s': the image belongs to another graph (CRC32 %08x, %u bytes; this one: %08x, %u bytes)",
                  m.name, (unsigned)entry.graph_crc32, (unsigned)entry.graph_size, (unsigned)m.graph_crc32,
                  (unsigned)m.graph_size);
    }
    if (tswap_crc32(m.graph, m.graph_size) != m.graph_crc32) {
      return Fail(c, TSWAP_CASCADE_ERR_CORRUPT, "member '%s': its graph array fails its CRC32", m.name);
    }
  }
  return TSWAP_CASCADE_OK;
}

// Reads every segment of every member once, checking its CRC32 (the arena is the scratch buffer).
int VerifySegments(tswap_cascade* c, uint8_t* scratch, uint32_t scratch_size) {
  for (uint32_t i = 0; i < c->config->member_count; ++i) {
    const int32_t index = static_cast<int32_t>(i);
    int rc = OpenMember(c, 1, index);
    if (rc != TSWAP_CASCADE_OK) return rc;
    for (uint32_t s = 0; s < c->image[1].segment_count; ++s) {
      const uint32_t size = c->image[1].segments[s].size;
      if (size > scratch_size) {
        return Fail(c, TSWAP_CASCADE_ERR_ARENA, "member '%s': segment %u (%u bytes) exceeds the arena",
                    Member(c, index).name, (unsigned)s, (unsigned)size);
      }
      rc = tswap_load(&c->image[1], s, 0, scratch, size, 1);
      if (rc == TSWAP_ERR_CRC) {
        return Fail(c, TSWAP_CASCADE_ERR_CORRUPT, "member '%s': segment %u fails its CRC32 (corrupt image)",
                    Member(c, index).name, (unsigned)s);
      }
      if (rc != TSWAP_OK) {
        return Fail(c, TSWAP_CASCADE_ERR_IMAGE, "member '%s': segment %u: %s", Member(c, index).name, (unsigned)s,
                    tswap_strerror(rc));
      }
    }
  }
  return TSWAP_CASCADE_OK;
}

void TearDown(tswap_cascade* c, int slot) {
  if (c->interpreter[slot] != nullptr) c->interpreter[slot]->~MicroInterpreter();
  c->interpreter[slot] = nullptr;
  if (slot == 1) c->current = -1;
}

// Sets member `index` up in `slot`: its image, an interpreter in the slot's arena region, tensors checked.
int SetUpMember(tswap_cascade* c, int slot, int32_t index) {
  TearDown(c, slot);
  int rc = OpenMember(c, slot, index);
  if (rc != TSWAP_CASCADE_OK) return rc;
  const tswap_cascade_member& m = Member(c, index);
  auto* interpreter = new (c->storage[slot])
      tflite::MicroInterpreter(tflite::GetModel(m.graph), *c->resolver, c->region[slot], c->region_size[slot]);
  c->interpreter[slot] = interpreter;
  if (tswap::SetUp(*interpreter, &c->image[slot]) != kTfLiteOk) {
    TearDown(c, slot);
    return Fail(c, TSWAP_CASCADE_ERR_ARENA,
                "member '%s': AllocateTensors failed (arena region of %u bytes too small, or an operator missing "
                "from the resolver)", m.name, (unsigned)c->region_size[slot]);
  }
  const TfLiteTensor* in = interpreter->input(0);
  const TfLiteTensor* out = interpreter->output(0);
  const size_t in_item = in->type == kTfLiteFloat32 ? sizeof(float) : 1u;
  if ((in->type != kTfLiteInt8 && in->type != kTfLiteFloat32) || in->bytes != c->config->input_size * in_item ||
      out->type != kTfLiteInt8 || out->bytes != m.outputs) {
    TearDown(c, slot);
    return Fail(c, TSWAP_CASCADE_ERR_MODEL,
                "member '%s': takes %u input bytes and gives %u int8 outputs; the cascade expects %u inputs (int8 or "
                "float) and %u int8 outputs", m.name, (unsigned)in->bytes, (unsigned)out->bytes,
                (unsigned)c->config->input_size, (unsigned)m.outputs);
  }
  if (slot == 1) c->current = index;
  return TSWAP_CASCADE_OK;
}

// The member's input tensor from the float input, as tflm_swap.interpreters.quantize_input does it
// (float32 arithmetic, round half to even, clipped).
void SetInput(TfLiteTensor* tensor, const float* input, uint32_t n) {
  if (tensor->type == kTfLiteFloat32) {
    memcpy(tensor->data.f, input, n * sizeof(float));
    return;
  }
  const float scale = tensor->params.scale;
  const float zero = static_cast<float>(tensor->params.zero_point);
  for (uint32_t i = 0; i < n; ++i) {
    float v = nearbyintf(input[i] / scale + zero);
    v = v < -128.0f ? -128.0f : v > 127.0f ? 127.0f : v;
    tensor->data.int8[i] = static_cast<int8_t>(v);
  }
}

// Sets member `index` up in slot 1 unless it is, reading its image into the cache first when one is
// in use and it is not there; `*fill` is the flash bytes that took.
int Prepare(tswap_cascade* c, int32_t index, uint64_t* fill, tswap_cascade_info* info) {
  int rc = TSWAP_CASCADE_OK;
  *fill = 0;
  if (c->cache_size != 0 && Cached(c, index) < 0 && (rc = Admit(c, index, fill)) != TSWAP_CASCADE_OK) return rc;
  const int cached = Cached(c, index);
  if (cached >= 0) c->cached[cached].last_use = ++c->clock;
  if (c->current != index) {
    ++info->setups;
    return SetUpMember(c, 1, index);
  }
  return (cached >= 0) != c->current_cached ? OpenMember(c, 1, index) : TSWAP_CASCADE_OK;  // now in the cache
}

// Runs member `index` (set up in `slot`) on `input`; returns its int8 logits in `logits`.
int Run(tswap_cascade* c, int slot, int32_t index, const float* input, const int8_t** logits,
        tswap_cascade_info* info) {
  uint64_t fill = 0;
  if (slot == 1) {
    const int rc = Prepare(c, index, &fill, info);
    if (rc != TSWAP_CASCADE_OK) return rc;
  }
  tflite::MicroInterpreter* interpreter = c->interpreter[slot];
  SetInput(interpreter->input(0), input, c->config->input_size);
  const uint64_t before = c->image[slot].bytes_read;
  if (interpreter->Invoke() != kTfLiteOk) {
    return Fail(c, TSWAP_CASCADE_ERR_INVOKE, "member '%s': Invoke failed", Member(c, index).name);
  }
  uint64_t bytes = c->image[slot].bytes_read - before;
  if (slot == 1 && c->current_cached) {  // the loads read RAM; the flash was read to fill the cache
    info->cache_bytes += bytes;
    bytes = fill;
  }
  if (info->n_members_run < kTswapCascadeMaxRun) {
    info->members_run[info->n_members_run] = static_cast<uint32_t>(index);
    info->member_bytes[info->n_members_run] = bytes;
    ++info->n_members_run;
  }
  info->bytes_loaded += bytes;
  *logits = interpreter->output(0)->data.int8;
  return TSWAP_CASCADE_OK;
}

int8_t Max(const int8_t* q, uint32_t n) {
  int8_t top = q[0];
  for (uint32_t i = 1; i < n; ++i) top = q[i] > top ? q[i] : top;
  return top;
}

// Softmax of int8 logits as CascadeInterpreter computes it (tflm_swap/cascade/scores.py): with
// e[i] = table[top - q[i]] = exp(-(top - q[i]) * scale), the sum of e in order; e[i] / sum is then
// probability i.
double SoftmaxSum(const int8_t* q, uint32_t n, const double* table, int8_t top) {
  double sum = 0.0;
  for (uint32_t i = 0; i < n; ++i) sum += table[top - q[i]];
  return sum;
}

// The two most likely groups, ties to the lower index (a stable sort of -p).
void TopTwo(const double* p, uint32_t n, uint32_t* first, uint32_t* second) {
  *first = 0;
  for (uint32_t g = 1; g < n; ++g) *first = p[g] > p[*first] ? g : *first;
  *second = *first == 0 ? 1 : 0;
  for (uint32_t g = 0; g < n; ++g) {
    if (g != *first && p[g] > p[*second]) *second = g;
  }
}

// The config is self-consistent: class map, member indices, output widths, policy.
int CheckConfig(tswap_cascade* c) {
  const tswap_cascade_config* config = c->config;
  const auto member_ok = [config](int32_t m) { return m > 0 && static_cast<uint32_t>(m) < config->member_count; };
  if (config->group_start[0] != 0 || config->group_start[config->n_groups] != config->n_classes ||
      config->members[0].outputs != config->n_groups) {
    return Fail(c, TSWAP_CASCADE_ERR_ARG, "config: the groups do not cover the %u classes", (unsigned)config->n_classes);
  }
  for (uint32_t g = 0; g < config->n_groups; ++g) {
    const uint32_t size = config->group_start[g + 1] - config->group_start[g];
    const int32_t m = config->specialist[g];
    if (config->group_start[g + 1] < config->group_start[g] || size == 0 || (m < 0 && size != 1) ||
        (m >= 0 && (!member_ok(m) || config->members[m].outputs != size))) {
      return Fail(c, TSWAP_CASCADE_ERR_ARG, "config: group %u's specialist does not match its classes", (unsigned)g);
    }
  }
  for (uint32_t j = 0; j < config->n_classes; ++j) {
    if (config->classes[j] >= config->n_classes) return Fail(c, TSWAP_CASCADE_ERR_ARG, "config: class out of range");
  }
  if (config->policy == TSWAP_FALLBACK_FULL &&
      (!member_ok(config->monolithic) || config->members[config->monolithic].outputs != config->n_classes)) {
    return Fail(c, TSWAP_CASCADE_ERR_ARG, "config: fallback 'full' needs the monolithic member");
  }
  if (config->policy < TSWAP_FALLBACK_TOP2 || config->policy > TSWAP_FALLBACK_NONE) {
    return Fail(c, TSWAP_CASCADE_ERR_ARG, "config: unknown fallback policy %d", config->policy);
  }
  return TSWAP_CASCADE_OK;
}

}  // namespace

uint32_t tswap_cascade_arena_size(const tswap_cascade_config* config) {
  if (config == nullptr || config->member_count == 0) return 0;
  return kAlign + AlignUp(config->members[0].arena_size) +
         AlignUp(LargestOther(config, [](const tswap_cascade_member& m) { return m.arena_size; }));
}

uint32_t tswap_cascade_table_size(const tswap_cascade_config* config) {
  if (config == nullptr || config->member_count == 0) return 0;
  return config->members[0].segment_count +
         LargestOther(config, [](const tswap_cascade_member& m) { return m.segment_count; });
}

int tswap_cascade_init(tswap_cascade* cascade, const tswap_cascade_config* config,
                       const tflite::MicroOpResolver& resolver, const tswap_flash* flash, uint8_t* arena,
                       uint32_t arena_size, tswap_segment* table, uint32_t table_capacity) {
  if (cascade == nullptr) return TSWAP_CASCADE_ERR_ARG;
  memset(static_cast<void*>(cascade), 0, sizeof(*cascade));
  cascade->current = -1;
  if (config == nullptr || flash == nullptr || arena == nullptr || table == nullptr || config->member_count == 0 ||
      config->n_groups < 2 || config->n_groups > kTswapCascadeMaxGroups) {
    return Fail(cascade, TSWAP_CASCADE_ERR_ARG, "missing argument, or a cascade of %u groups (2..%u supported)",
                config == nullptr ? 0u : (unsigned)config->n_groups, (unsigned)kTswapCascadeMaxGroups);
  }
  cascade->config = config;
  cascade->resolver = &resolver;
  int rc = CheckConfig(cascade);
  if (rc != TSWAP_CASCADE_OK) return rc;
  if (arena_size < tswap_cascade_arena_size(config) || table_capacity < tswap_cascade_table_size(config)) {
    return Fail(cascade, TSWAP_CASCADE_ERR_ARENA, "arena of %u bytes and %u table entries given; the cascade needs %u "
                "and %u", (unsigned)arena_size, (unsigned)table_capacity, (unsigned)tswap_cascade_arena_size(config),
                (unsigned)tswap_cascade_table_size(config));
  }
  rc = tswap_container_open(&cascade->container, flash);
  if (rc != TSWAP_OK) return Fail(cascade, TSWAP_CASCADE_ERR_IMAGE, "cascade image: %s", tswap_strerror(rc));
  if ((rc = CheckMembers(cascade)) != TSWAP_CASCADE_OK) return rc;
  uint8_t* start = arena + ((kAlign - reinterpret_cast<uintptr_t>(arena) % kAlign) % kAlign);
  const uint32_t usable = arena_size - static_cast<uint32_t>(start - arena);
  cascade->table[0] = table;
  cascade->table[1] = table + config->members[0].segment_count;
  if ((rc = VerifySegments(cascade, start, usable)) != TSWAP_CASCADE_OK) return rc;
  cascade->region[0] = start;
  cascade->region_size[0] = AlignUp(config->members[0].arena_size);
  cascade->region[1] = start + cascade->region_size[0];
  cascade->region_size[1] = usable - cascade->region_size[0];
  if ((rc = SetUpMember(cascade, 0, 0)) != TSWAP_CASCADE_OK) return rc;
  for (uint32_t i = 1; i < config->member_count; ++i) {  // each once: Prepare validates it against the image
    if ((rc = SetUpMember(cascade, 1, static_cast<int32_t>(i))) != TSWAP_CASCADE_OK) return rc;
  }
  cascade->message[0] = '\0';
  return TSWAP_CASCADE_OK;
}

int tswap_cascade_classify(tswap_cascade* cascade, const float* input, double* scores, tswap_cascade_info* info) {
  tswap_cascade_info unused;
  if (info == nullptr) info = &unused;
  memset(info, 0, sizeof(*info));
  if (cascade == nullptr || cascade->interpreter[0] == nullptr || input == nullptr || scores == nullptr) {
    return TSWAP_CASCADE_ERR_ARG;
  }
  const tswap_cascade_config* config = cascade->config;
  const int8_t* q = nullptr;
  int rc = Run(cascade, 0, 0, input, &q, info);
  if (rc != TSWAP_CASCADE_OK) return rc;
  double* p = cascade->router_p;
  const uint32_t n_groups = config->n_groups;
  const double* router_table = config->members[0].exp_table;
  const int8_t router_top = Max(q, n_groups);
  const double router_sum = SoftmaxSum(q, n_groups, router_table, router_top);
  for (uint32_t g = 0; g < n_groups; ++g) p[g] = router_table[router_top - q[g]] / router_sum;
  uint32_t top, second;
  TopTwo(p, n_groups, &top, &second);
  info->group = static_cast<int32_t>(top);
  info->confidence = p[top];
  const bool confident = p[top] >= config->threshold || config->policy == TSWAP_FALLBACK_NONE;
  if (!confident && config->policy == TSWAP_FALLBACK_FULL) {
    const tswap_cascade_member& mono = Member(cascade, config->monolithic);
    if ((rc = Run(cascade, 1, config->monolithic, input, &q, info)) != TSWAP_CASCADE_OK) return rc;
    const int8_t most = Max(q, mono.outputs);
    const double sum = SoftmaxSum(q, mono.outputs, mono.exp_table, most);
    for (uint32_t k = 0; k < config->n_classes; ++k) scores[k] = mono.exp_table[most - q[k]] / sum;
    info->monolithic = true;
    cascade->message[0] = '\0';
    return TSWAP_CASCADE_OK;
  }
  for (uint32_t g = 0; g < n_groups; ++g) {
    const uint32_t size = config->group_start[g + 1] - config->group_start[g];
    for (uint32_t j = config->group_start[g]; j < config->group_start[g + 1]; ++j) {
      scores[config->classes[j]] = p[g] / static_cast<double>(size);
    }
  }
  const uint32_t run[2] = {top, second};
  info->n_groups_run = confident ? 1u : 2u;
  for (uint32_t r = 0; r < info->n_groups_run; ++r) {
    const uint32_t g = run[r];
    info->groups_run[r] = g;
    const int32_t index = config->specialist[g];
    const uint32_t first = config->group_start[g];
    if (index < 0) {  // a single class: the router's probability is the class's
      scores[config->classes[first]] = p[g] * 1.0;
      continue;
    }
    const tswap_cascade_member& m = Member(cascade, index);
    if ((rc = Run(cascade, 1, index, input, &q, info)) != TSWAP_CASCADE_OK) return rc;
    const int8_t most = Max(q, m.outputs);
    const double sum = SoftmaxSum(q, m.outputs, m.exp_table, most);
    for (uint32_t j = 0; j < m.outputs; ++j) scores[config->classes[first + j]] = p[g] * (m.exp_table[most - q[j]] / sum);
  }
  cascade->message[0] = '\0';
  return TSWAP_CASCADE_OK;
}

int tswap_cascade_use_cache(tswap_cascade* cascade, uint8_t* buffer, uint32_t size) {
  if (cascade == nullptr || cascade->config == nullptr || (buffer == nullptr && size != 0)) return TSWAP_CASCADE_ERR_ARG;
  TearDown(cascade, 1);  // slot 1 may read the old cache
  const uint32_t skip = buffer == nullptr ? 0u : (kAlign - reinterpret_cast<uintptr_t>(buffer) % kAlign) % kAlign;
  cascade->cache = buffer == nullptr ? nullptr : buffer + skip;
  cascade->cache_size = size > skip ? size - skip : 0u;
  cascade->cached_count = 0;
  cascade->current_cached = false;
  return TSWAP_CASCADE_OK;
}

const char* tswap_cascade_message(const tswap_cascade* cascade) { return cascade == nullptr ? "" : cascade->message; }

void tswap_cascade_deinit(tswap_cascade* cascade) {
  if (cascade == nullptr) return;
  TearDown(cascade, 1);
  TearDown(cascade, 0);
}
