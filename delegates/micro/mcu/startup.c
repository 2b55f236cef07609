/* Minimal Cortex-M startup for the QEMU boards tflm_swap runs on (mps2-an386): vector table, .data
 * copy, .bss zero, FPU on, C++ constructors, semihosting stdio (newlib rdimon), argv from the
 * semihosting command line, SysTick as an instruction counter, main, semihosting exit.
 *
 * Under `qemu-system-arm -icount shift=0` one guest instruction is 1 ns of virtual time and SysTick
 * runs on the 25 MHz processor clock, so one tick is 40 instructions (instructions, not cycles). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tswap_mcu.h"
#include CMSIS_DEVICE_HEADER

extern uint32_t __etext, __data_start__, __data_end__, __bss_start__, __bss_end__, __StackTop;
extern void __libc_init_array(void);
extern void initialise_monitor_handles(void);
extern int main(int argc, char** argv);

static volatile uint32_t systick_wraps;

void SysTick_Handler(void) { ++systick_wraps; }

uint64_t tswap_mcu_ticks(void) {
  uint32_t wraps, value;
  do {
    wraps = systick_wraps;
    value = SysTick->VAL;
  } while (wraps != systick_wraps);
  return ((uint64_t)wraps << 24) + (SysTick_LOAD_RELOAD_Msk - value);
}

static void systick_start(void) {
  SysTick->LOAD = SysTick_LOAD_RELOAD_Msk;
  SysTick->VAL = 0;
  SysTick->CTRL = SysTick_CTRL_CLKSOURCE_Msk | SysTick_CTRL_TICKINT_Msk | SysTick_CTRL_ENABLE_Msk;
  while (SysTick->VAL == 0) {
  } /* wait for the first reload */
}

static int semihost_call(int op, void* arg) {
  register int r0 __asm__("r0") = op;
  register void* r1 __asm__("r1") = arg;
  __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

/* argv from the semihosting command line (QEMU: the -kernel file name, then -append's words). */
static int semihost_argv(char*** argv_out) {
  static char cmdline[512];
  static char* args[16];
  struct {
    char* buf;
    int len;
  } block = {cmdline, (int)sizeof(cmdline) - 1};
  int argc = 0;
  if (semihost_call(0x15 /* SYS_GET_CMDLINE */, &block) == 0) {
    char* p = cmdline;
    p[block.len] = 0;
    while (*p && argc < 15) {
      while (*p == ' ') *p++ = 0;
      if (!*p) break;
      args[argc++] = p;
      while (*p && *p != ' ') ++p;
    }
  }
  if (argc == 0) args[argc++] = (char*)"app";
  args[argc] = 0;
  *argv_out = args;
  return argc;
}

void Reset_Handler(void) {
  char** argv;
  int argc, rc;
  memcpy(&__data_start__, &__etext, (size_t)((char*)&__data_end__ - (char*)&__data_start__));
  memset(&__bss_start__, 0, (size_t)((char*)&__bss_end__ - (char*)&__bss_start__));
#if defined(__ARM_FP)
  SCB->CPACR |= (0xFu << 20); /* CP10, CP11 full access */
  __DSB();
  __ISB();
#endif
  initialise_monitor_handles();
  __libc_init_array();
  argc = semihost_argv(&argv);
  systick_start();
  rc = main(argc, argv);
  printf("main_ticks: %llu\n", (unsigned long long)tswap_mcu_ticks());
  fflush(stdout);
  exit(rc);
}

/* Any fault: report through semihosting (SYS_WRITE0) and exit with status 99 (SYS_EXIT_EXTENDED). */
static void Fault_Handler(void) {
  static const char msg[] = "FAULT\n";
  static uint32_t block[2] = {0x20026 /* ADP_Stopped_ApplicationExit */, 99};
  semihost_call(0x04, (void*)msg);
  semihost_call(0x20, block);
  for (;;) {
  }
}

__attribute__((section(".isr_vector"), used)) void (*const tswap_vector_table[16])(void) = {
    (void (*)(void))(&__StackTop), Reset_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, 0, 0, 0, 0, Fault_Handler, Fault_Handler, 0, Fault_Handler,
    SysTick_Handler,
};
