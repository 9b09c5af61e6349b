/**
 * What every verb needs: the project folder and its configuration.
 */
import * as path from "node:path"
import type { Command } from "commander"
import { type LoadedConfig, load } from "../config/load.ts"

/** The project root from `--root` (default: the working directory). */
export const rootOf = (cmd: Command): string => path.resolve((cmd.optsWithGlobals().root as string | undefined) ?? ".")

/** The configuration of a project: BEDS_CONFIG_DIR, else <root>/config. */
export const configOf = (root: string) => load({ dir: process.env.BEDS_CONFIG_DIR ?? path.join(root, "config") })

export type { LoadedConfig }
