/** The loaded configuration as a service, so that every module reads the same, validated values. */
import { Context, Layer } from "effect"
import type { ConfigError } from "../errors.ts"
import { type LoadedConfig, type LoadOptions, load } from "./load.ts"

/** The decoded configuration, with the files read and each key's origin. */
export class BedsConfig extends Context.Service<BedsConfig, LoadedConfig>()("beds/Config") {}

/** Builds BedsConfig by loading the configuration; start-up fails on a ConfigError. */
export const layer = (options?: LoadOptions): Layer.Layer<BedsConfig, ConfigError> =>
  Layer.effect(BedsConfig, load(options))
