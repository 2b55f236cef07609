// tflm_swap cascade on TensorFlow Lite Micro: a router and specialists (and optionally the monolithic
// model) from one flash image, run one after another in one arena.
//
// The image is a version-3 container (tswap_micro.h): one member image per model, named. The arena
// has two regions: the router's (its interpreter stays set up) and one shared by every other member
// (a specialist's interpreter is set up there when the router picks it and it is not the one set up
// last). Every member reads its weights per operator through its load operators (tswap_tflm.h).
//
//   tswap_cascade_init      checks the container against the generated config (member names, graph
//                           CRC32 and size, segment tables), every segment's CRC32, sets up every
//                           member once (AllocateTensors, tensor shapes) and leaves the router ready.
//   tswap_cascade_use_cache optional: a RAM buffer holding the images of recently run members (not the
//                           router) up to its size, least recently used evicted first: a member that
//                           ran before and still fits is read from RAM instead of flash.
//   tswap_cascade_classify  quantizes the float input for each member, runs the router, applies the
//                           bundle's fallback policy, runs the chosen specialist(s) or the monolithic
//                           model and writes scores over the original classes (they sum to 1).
//
// Scores are computed exactly as tflm_swap.cascade.CascadeInterpreter computes them (double
// precision, softmax of the int8 logits through the member's exp table exp(-k * output scale)), so
// that they are bit-identical to it. Every function returns TSWAP_CASCADE_OK (0) or a negative
// tswap_cascade_status; tswap_cascade_message() then says what failed, naming the member.
#ifndef TSWAP_CASCADE_H_
#define TSWAP_CASCADE_H_

#include <stddef.h>
#include <stdint.h>

#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tswap_micro.h"

constexpr uint32_t kTswapCascadeMaxGroups = 64;
constexpr uint32_t kTswapCascadeMaxRun = 3;  // router + two specialists, or router + monolithic
constexpr uint32_t kTswapCascadeExpTable = 256;
constexpr uint32_t kTswapCascadeMaxCached = 16;  // members the RAM cache holds at once

enum tswap_cascade_policy { TSWAP_FALLBACK_TOP2 = 0, TSWAP_FALLBACK_FULL = 1, TSWAP_FALLBACK_NONE = 2 };

enum tswap_cascade_status {
  TSWAP_CASCADE_OK = 0,
  TSWAP_CASCADE_ERR_ARG = -1,       // NULL argument, or a config this library cannot run
  TSWAP_CASCADE_ERR_IMAGE = -2,     // the container or a member's image is unreadable or invalid
  TSWAP_CASCADE_ERR_MISMATCH = -3,  // the image belongs to another cascade (members, graphs, tables)
  TSWAP_CASCADE_ERR_CORRUPT = -4,   // a member segment fails its CRC32, or a graph array its CRC32
  TSWAP_CASCADE_ERR_ARENA = -5,     // arena or segment-table storage too small, AllocateTensors failed
  TSWAP_CASCADE_ERR_MODEL = -6,     // a member's input/output tensors differ from the config
  TSWAP_CASCADE_ERR_INVOKE = -7     // a member's Invoke failed (e.g. a flash read)
};

// One model of the cascade (generated: {prefix}_cascade.cc).
struct tswap_cascade_member {
  const char* name;                 // as in the container's member table
  const unsigned char* graph;       // the rewritten TFLM graph (internal flash)
  uint32_t graph_size;
  uint32_t graph_crc32;
  const tswap_segment* segments;    // the member image's segment table, as generated
  uint32_t segment_count;
  uint32_t image_size;
  uint32_t arena_size;              // bytes this member's interpreter needs (measured on the host TFLM)
  uint32_t outputs;                 // output 0's width (int8 logits)
  const double* exp_table;          // kTswapCascadeExpTable entries: exp(-k * output scale)
};

// The cascade (generated).
struct tswap_cascade_config {
  uint32_t n_classes;
  uint32_t n_groups;
  uint32_t input_size;                  // input elements (float)
  const tswap_cascade_member* members;  // container order; members[0] is the router
  uint32_t member_count;
  const int32_t* specialist;            // per group: member index, or -1 (a single class: no model)
  int32_t monolithic;                   // member index, or -1
  const uint16_t* classes;              // every group's classes, group after group
  const uint32_t* group_start;          // n_groups + 1 offsets into `classes`
  int policy;                           // tswap_cascade_policy
  double threshold;                     // router confidence below which the policy applies
};

// What one classification did.
struct tswap_cascade_info {
  int32_t group;                               // the router's top group
  double confidence;                           // its probability
  uint32_t groups_run[2];                      // specialists' groups run (none with the monolithic)
  uint32_t n_groups_run;
  bool monolithic;                             // the 'full' fallback ran the monolithic model
  uint32_t members_run[kTswapCascadeMaxRun];   // member indices run, in order (router first)
  uint64_t member_bytes[kTswapCascadeMaxRun];  // flash bytes each of them read
  uint32_t n_members_run;
  uint64_t bytes_loaded;                       // flash bytes read by this classification
  uint64_t cache_bytes;                        // bytes read from the RAM cache instead
  uint32_t setups;                             // interpreters set up (member switches)
};

// One member's image held in the RAM cache.
struct tswap_cascade_cached {
  int32_t member;
  uint32_t offset;  // in the cache buffer
  uint32_t size;
  uint32_t last_use;
};

struct tswap_cascade {
  const tswap_cascade_config* config;
  const tflite::MicroOpResolver* resolver;
  tswap_container container;
  tswap_flash flash[2];  // slot 0: the router; slot 1: the member set up in the shared region
  tswap_image image[2];
  tswap_segment* table[2];
  uint8_t* region[2];
  uint32_t region_size[2];
  tflite::MicroInterpreter* interpreter[2];
  alignas(tflite::MicroInterpreter) unsigned char storage[2][sizeof(tflite::MicroInterpreter)];
  int32_t current;  // member set up in slot 1, -1 none
  bool current_cached;  // slot 1's image is read from the cache
  tswap_memory_flash cache_flash;
  uint8_t* cache;
  uint32_t cache_size;
  tswap_cascade_cached cached[kTswapCascadeMaxCached];
  uint32_t cached_count;
  uint32_t clock;
  double router_p[kTswapCascadeMaxGroups];
  char message[192];
};

// Bytes of arena the config needs: the router's region plus the largest other member's, each
// rounded up to 16 bytes, plus 16 for aligning the arena's start.
uint32_t tswap_cascade_arena_size(const tswap_cascade_config* config);

// Segment-table entries the config needs: the router's plus the largest other member's.
uint32_t tswap_cascade_table_size(const tswap_cascade_config* config);

// Open `flash` (a version-3 container) for `config`, check it, and set up the members in `arena`.
// `resolver` must register every member's builtin operators and tswap's (tswap::AddLoadOps). The
// arena, the table storage, the resolver and the flash driver must outlive the cascade.
int tswap_cascade_init(tswap_cascade* cascade, const tswap_cascade_config* config,
                       const tflite::MicroOpResolver& resolver, const tswap_flash* flash, uint8_t* arena,
                       uint32_t arena_size, tswap_segment* table, uint32_t table_capacity);

// Keep the images of recently run members (not the router) in `buffer` (16-byte aligned use) up to
// `size` bytes, least recently used evicted first; size 0 turns the cache off. Call after init.
int tswap_cascade_use_cache(tswap_cascade* cascade, uint8_t* buffer, uint32_t size);

// Classify one input (`config->input_size` floats, the bundle's input layout) into `scores`
// (`config->n_classes` doubles). `info` may be NULL.
int tswap_cascade_classify(tswap_cascade* cascade, const float* input, double* scores, tswap_cascade_info* info);

// What the last failing call reported ("" after success).
const char* tswap_cascade_message(const tswap_cascade* cascade);

// Tear the interpreters down (the arena may then be reused).
void tswap_cascade_deinit(tswap_cascade* cascade);

#endif  // TSWAP_CASCADE_H_
